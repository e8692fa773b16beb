"""What a valid config may still get wrong: warnings, logged at start-up and on reload and
printed by `check-config`, that never stop the proxy."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def upstream_warnings(url: str) -> tuple[tuple[str, str], ...]:
    """The docs promise an upstream on loopback; say why another host is a risk."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return ()
    why = (
        f"{host} is not a loopback address: the proxy is a sidecar for an API that listens "
        "on 127.0.0.1 only; an API reachable from the network can be called around the "
        "proxy, with any X-Auth-* headers the caller likes (docs/security.md)"
    )
    return (("upstream.url", why),)
