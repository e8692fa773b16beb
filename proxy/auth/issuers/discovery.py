"""Where an issuer publishes its keys (and introspection endpoint): OpenID Connect
Discovery or RFC 8414 authorization server metadata.

`metadata_urls` and `parse_metadata` are pure. The document's `issuer` must be the
configured issuer byte for byte (RFC 8414 §3.3, OIDC Discovery §4.3): a document for
another issuer is not used — that is the mix-up attack. Endpoint URLs must be https
(http only to a loopback host, as for the issuer itself).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from proxy.auth.gate import Unavailable
from proxy.auth.issuers.calls import IssuerHttp
from proxy.config.issuers import issuer_url
from proxy.core.errors import ProxyError

log = logging.getLogger("proxy.discovery")

OIDC: Final = "/.well-known/openid-configuration"
RFC8414: Final = "/.well-known/oauth-authorization-server"
# A found document is re-read this often (keys move with jwks_uri only rarely).
REFRESH_SECONDS: Final = 24 * 3600.0
FAILED_BACKOFF: Final = 5.0


@dataclass(frozen=True, slots=True)
class Metadata:
    jwks_uri: str
    introspection_endpoint: str | None


def metadata_urls(issuer: str) -> tuple[str, ...]:
    """OIDC appends its well-known path to the issuer; RFC 8414 inserts its own between
    the host and the issuer's path. Both are tried, OIDC first (every preset's issuer
    serves it); for an issuer without a path the two differ only in the name."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    oidc = urlunsplit((parts.scheme, parts.netloc, path + OIDC, "", ""))
    oauth = urlunsplit((parts.scheme, parts.netloc, RFC8414 + path, "", ""))
    return (oidc, oauth)


def parse_metadata(body: bytes, issuer: str) -> Metadata:
    """The endpoints of a metadata document fetched for `issuer`; ValueError when it is not one."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("issuer") != issuer:
        raise ValueError(
            f"the document is for issuer {str(data.get('issuer'))[:200]!r}, not {issuer!r}"
        )
    jwks_uri = data.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise ValueError("no jwks_uri")
    jwks_uri = issuer_url(jwks_uri, strip=False)
    introspection = data.get("introspection_endpoint")
    if introspection is not None:
        introspection = (
            issuer_url(introspection, strip=False) if isinstance(introspection, str) else None
        )
    return Metadata(jwks_uri=jwks_uri, introspection_endpoint=introspection)


class Discovery:
    """The issuer's metadata, fetched on first need, shared by concurrent callers, kept
    for `REFRESH_SECONDS`; a failed refresh keeps the last good document."""

    def __init__(self, http: IssuerHttp, *, now: Callable[[], float] = time.time) -> None:
        self._http = http
        self._now = now
        self._found: Metadata | None = None
        self._found_at = float("-inf")
        self._failed_at = float("-inf")
        self._lock = asyncio.Lock()

    def _usable(self, now: float) -> bool:
        return self._found is not None and now - self._found_at < REFRESH_SECONDS

    async def metadata(self) -> Metadata:
        if self._found is not None and self._usable(self._now()):
            return self._found
        async with self._lock:
            now = self._now()
            if not self._usable(now) and now - self._failed_at >= FAILED_BACKOFF:
                await self._discover()
            if self._found is None:
                raise Unavailable(
                    f"cannot find issuer {self._http.cfg.name}'s keys (discovery failed)"
                )
            return self._found

    async def _discover(self) -> None:
        cfg = self._http.cfg
        problems: list[str] = []
        for url in metadata_urls(cfg.issuer):
            try:
                status, _, body = await self._http.get("discovery", url)
                if status != 200:
                    raise ValueError(f"HTTP {status}")
                self._found = parse_metadata(body, cfg.issuer)
                self._found_at = self._now()
                return
            except ProxyError as exc:
                problems.append(f"{url}: {exc.message}")
            except (ValueError, TypeError, RecursionError) as exc:
                problems.append(f"{url}: {exc}")
        self._failed_at = self._now()
        log.error("discovery for issuer %s failed: %s", cfg.name, "; ".join(problems))
