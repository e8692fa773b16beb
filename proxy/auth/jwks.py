"""The instance JWKS and local JWT verification (session, JWT-format M2M and OAuth tokens).

Keys are fetched from `{api_url}/v1/jwks` with the instance key and held by the key-set
cache every issuer shares (`keyset`): kept for the answer's Cache-Control max-age within
[`jwks_min_refetch_seconds`, `jwks_cache_seconds`] (`jwks_cache_seconds` without one); an
unknown `kid` (key rotation) triggers a refetch at most once per
`jwks_min_refetch_seconds`, so forged kids cannot turn into a flood of fetches; if a
fetch fails the last good key set keeps being used.

Time claims are checked here against the injectable clock (PyJWT would use the wall
clock), so PyJWT only checks the signature (`jws.verify_signature`, which reads the claims
as strict JSON), restricted to the RS256 family.

PyJWT (and cryptography under it: about 8 MB of RSS) is imported on the first JWT or
key set, not at start-up: a proxy whose partners only send opaque M2M tokens never loads
it. The import holds the event loop once, for about 40 ms on a 2-core box.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from proxy.auth.claims_json import numeric_date
from proxy.auth.clerk import ClerkClient, ClerkUnavailable
from proxy.auth.jws import verify_signature
from proxy.auth.keyset import Fetched, Key, KeySetCache
from proxy.auth.tokens import JWT_ALGORITHMS
from proxy.config import model as config
from proxy.core.errors import TOKEN_EXPIRED, TOKEN_INVALID, ProxyError

log = logging.getLogger("proxy.jwks")

UNKNOWN_KEY: Final = (
    "the token is signed by a key this Clerk instance does not use; tokens are scoped to one "
    "Clerk instance, so a token issued by another instance or environment is not valid here"
)


def _unavailable() -> ProxyError:
    return ClerkUnavailable("cannot fetch Clerk's signing keys")


def _invalid(message: str, token_type: str | None) -> ProxyError:
    return ProxyError(TOKEN_INVALID, message, token_type=token_type)


def _date(claims: Mapping[str, Any], name: str, token_type: str | None) -> float | None:
    try:
        return numeric_date(claims.get(name))
    except ValueError as exc:
        raise _invalid(f"the token's {name} claim {exc}", token_type) from None


def check_claims(
    claims: Mapping[str, Any],
    cfg: config.Clerk,
    now: float,
    token_type: str | None = None,
) -> None:
    """exp (required), nbf and iat with `clock_skew_seconds`; iss when configured. What each
    class of Clerk JWT requires besides (sub, azp, sts) is `clerk_jwt`'s."""
    skew = cfg.clock_skew_seconds
    exp = _date(claims, "exp", token_type)
    if exp is None:
        raise _invalid("the token has no expiry", token_type)
    if now > exp + skew:
        raise ProxyError(TOKEN_EXPIRED, "the token has expired", token_type=token_type)
    nbf = _date(claims, "nbf", token_type)
    if nbf is not None and now + skew < nbf:
        raise _invalid("the token is not valid yet", token_type)
    iat = _date(claims, "iat", token_type)
    if iat is not None and now + skew < iat:
        raise _invalid("the token was issued in the future", token_type)
    if cfg.issuer and str(claims.get("iss", "")).rstrip("/") != cfg.issuer:
        raise _invalid("the token was issued by another Clerk instance", token_type)


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
        self._cfg = cfg
        self._client = client
        self._now = now
        self.keys = KeySetCache(
            self._fetch_set,
            name="Clerk",
            max_age=cfg.jwks_cache_seconds,
            min_refetch=cfg.jwks_min_refetch_seconds,
            now=now,
        )

    async def _fetch_set(self) -> Fetched:
        status, headers, body = await self._client.get("jwks", "/v1/jwks")
        if status in (401, 403):
            log.error("JWKS fetch: Clerk refused the proxy's own secret key (HTTP %d)", status)
        return status, headers, body

    async def key(self, kid: str) -> Key | None:
        """The RSA key for `kid`, fetching/refetching as the cache rules allow.

        Raises ClerkUnavailable when no key set could be fetched yet."""
        key = await self.keys.key(kid, _unavailable)
        return key if key is not None and key.kty == "RSA" else None

    async def verify(
        self, token: str, token_type: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(header, claims) of a JWT whose signature and time claims check out."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed JWT", token_type) from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in JWT_ALGORITHMS:
            raise _invalid("JWT algorithm not allowed (RS256, RS384 or RS512 only)", token_type)
        if not isinstance(kid, str) or not kid:
            raise _invalid("the JWT names no signing key (kid)", token_type)
        key = await self.key(kid)
        if key is None:
            raise _invalid(UNKNOWN_KEY, token_type)
        if (key.alg or "RS256") != alg:
            # A key is for the algorithm its JWK names (RS256 when it names none); Clerk's
            # SDK (WebCrypto) refuses the mismatch too.
            raise _invalid("the JWT's algorithm is not the one its signing key is for", token_type)
        claims = verify_signature(token, key, alg, token_type)
        check_claims(claims, self._cfg, self._now(), token_type)
        return header, claims
