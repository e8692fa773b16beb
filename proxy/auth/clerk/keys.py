"""The instance JWKS and Clerk's JWTs (session, JWT-format M2M and OAuth tokens).

Keys are fetched from `{api_url}/v1/jwks` with the instance key and held by the key-set
cache every issuer shares (`keyset`: Cache-Control within [`jwks_min_refetch_seconds`,
`jwks_cache_seconds`], an unknown `kid` refetched at most once per
`jwks_min_refetch_seconds`, the last good set kept when a fetch fails). A Clerk JWT takes
the one JWT path every issuer's does (`jws`) with Clerk's rules: the RS256 family, the
clock skew, `iss` when `clerk.issuer` is set; what each class must carry is `clerk_jwt`'s.
The PyJWT import the first JWT or key set makes holds the event loop once (~40 ms).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

from proxy.auth import jws
from proxy.auth.clerk.api import ClerkClient
from proxy.auth.keyset import Fetched, KeySetCache
from proxy.auth.tokens import JWT_ALGORITHMS
from proxy.config import model as config

log = logging.getLogger("proxy.jwks")

UNKNOWN_KEY: Final = (
    "the token is signed by a key this Clerk instance does not use; tokens are scoped to one "
    "Clerk instance, so a token issued by another instance or environment is not valid here"
)


class Jwks:
    """Clerk's key set, held by the shared `keyset.KeySetCache` (Cache-Control, unknown-kid
    refetch rate limit, last good keys on outage), fetched with the instance key."""

    def __init__(
        self,
        cfg: config.Clerk,
        client: ClerkClient,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._now = now
        self.rules = jws.Rules(
            algorithms=tuple(sorted(JWT_ALGORITHMS)),
            leeway=cfg.clock_skew_seconds,
            unknown_key=UNKNOWN_KEY,
            issuers=(cfg.issuer, cfg.issuer + "/") if cfg.issuer else (),
        )
        self.keys = KeySetCache(
            self._fetch_set,
            name="Clerk",
            max_age=cfg.jwks_cache_seconds,
            min_refetch=cfg.jwks_min_refetch_seconds,
            # A key for the algorithm its JWK names, RS256 when none: Clerk's SDK
            # (WebCrypto) imports it for that one only.
            default_alg="RS256",
            now=now,
        )

    async def _fetch_set(self) -> Fetched:
        status, headers, body = await self._client.get("jwks", "/v1/jwks")
        if status in (401, 403):
            log.error("JWKS fetch: Clerk refused the proxy's own secret key (HTTP %d)", status)
        return status, headers, body

    async def verify(
        self, token: str, token_type: str | None = None, parts: jws.Unverified | None = None
    ) -> dict[str, Any]:
        """The claims of a JWT whose header, signature and time claims check out; `parts`:
        its segments as classification read them (None: read here)."""
        return await jws.verify(token, parts, self.rules, self.keys.key, self._now, token_type)

    def verify_held(
        self, token: str, token_type: str | None, parts: jws.Unverified | None
    ) -> dict[str, Any] | None:
        """`verify` with the keys held now; None: the token's key is not among them."""
        return jws.verify_held(token, parts, self.rules, self.keys.held, self._now, token_type)
