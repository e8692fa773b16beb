"""What a valid config may still get wrong: warnings, logged at start-up and on reload and
printed by `check-config`, that never stop the proxy."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from proxy.config.model import Route
from proxy.config.routes import MACHINE_PREFIX
from proxy.config.values import is_loopback


def upstream_warnings(url: str) -> tuple[tuple[str, str], ...]:
    """The docs promise an upstream on loopback; say why another host is a risk."""
    host = urlsplit(url).hostname or ""
    if is_loopback(host):
        return ()
    why = (
        f"{host} is not a loopback address: the proxy is a sidecar for an API that listens "
        "on 127.0.0.1 only; an API reachable from the network can be called around the "
        "proxy, with any X-Auth-* headers the caller likes (docs/security.md)"
    )
    return (("upstream.url", why),)


def scope_warnings(keyed: Sequence[tuple[str, Route]]) -> tuple[tuple[str, str], ...]:
    """A route that admits Clerk machines but asks for a scope that is not a machine id:
    a partner's M2M token is refused there every time (its scopes are the ids of the
    machines it may call), which is rarely what the route's author meant."""
    out: list[tuple[str, str]] = []
    for key, route in keyed:
        admits_machines = route.principal_types is None or "machine" in route.principal_types
        if route.issuers is not None and "clerk" not in dict(route.issuers):
            continue  # Clerk's tokens are not accepted here at all
        foreign = [s for s in route.scopes if not s.startswith(MACHINE_PREFIX)]
        if admits_machines and foreign:
            out.append(
                (
                    f"{key}.scopes",
                    f"{' '.join(foreign)} is not a machine id ({MACHINE_PREFIX}…): Clerk M2M "
                    "tokens carry only the ids of the machines they may call, so a partner's "
                    "M2M token is always refused here (403 insufficient_scope); set "
                    "principal_types without machine, or list machines under "
                    f"{key}.machines instead",
                )
            )
    return tuple(out)
