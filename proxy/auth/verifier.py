"""`ClerkVerifier`: classify → cache → budget (misses only) → Clerk or JWKS → Principal.

Metrics counted here: verify_cache and the Clerk request metrics. auth_decisions is
the request path's (app.py), which sees every decision including policy refusals.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp

from proxy.auth import tokens
from proxy.auth.budget import VerificationBudget
from proxy.auth.cache.store import VerificationCache, cache_scope
from proxy.auth.clerk import ClerkClient
from proxy.auth.clerk_jwt import check_class_claims, jwt_principal
from proxy.auth.jwks import Jwks
from proxy.auth.tokens import TokenKind
from proxy.config.load import Config
from proxy.core.errors import TOKEN_INVALID, ProxyError
from proxy.core.principal import Principal, Recent
from proxy.observe.metrics import Metrics

__all__ = ["ClerkVerifier", "jwt_principal"]


class ClerkVerifier:
    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        ck = config.clerk
        self._clerk_cfg = ck
        self._now = now
        self.clerk = ClerkClient(ck, session, metrics, now=now)
        self.jwks = Jwks(ck, self.clerk, now=now)
        self.cache = VerificationCache(
            config.cache, cache_scope(ck.api_url, ck.secret_key), metrics, now=now
        )
        self.budget = VerificationBudget(config.verification_budget, metrics, now=now)
        # The cache's own `hit` counter, bound here: a memo hit is counted without a call
        # into the (uncompiled) cache.
        self._memo_hits = metrics.verify_cache.labels("hit")

    async def start(self) -> None:
        """Nothing to warm: JWKS is fetched on first use, so Clerk being down at start-up
        delays nothing but JWT verification."""

    async def close(self) -> None:
        await self.cache.close()

    def cached(self, token: str, recent: Recent | None = None) -> Principal | None:
        if (
            recent is not None
            and recent.owner is self
            and recent.token == token
            and self._now() < recent.fresh_until
        ):
            self._memo_hits.inc()
            return recent.principal
        entry = self.cache.fresh_entry(self.cache.key(token))
        if entry is None:
            return None
        if recent is not None:
            recent.owner, recent.token = self, token
            recent.principal, recent.fresh_until = entry.principal, entry.fresh_until
        return entry.principal

    async def verify(self, token: str, client_ip: str) -> Principal:
        key = self.cache.key(token)
        # Only well-formed tokens are ever cached, so a hit needs no classification.
        cached = self.cache.fresh(key)
        if cached is not None:
            return cached
        kind = tokens.classify(token)
        # A JWT refusal is cheap to recompute and may stop being one (JWKS rotation,
        # nbf reached), so only Clerk's answers are negative-cached.
        return await self.cache.get(
            key,
            lambda: self._load(kind, token, client_ip),
            cache_rejections=not kind.is_jwt,
        )

    async def _load(self, kind: TokenKind, token: str, client_ip: str) -> Principal:
        try:
            if kind.is_jwt:
                _, claims = await self.jwks.verify(token, kind.token_type)
                check_class_claims(kind, claims, self._clerk_cfg)
                principal = jwt_principal(kind, claims)
                if not principal.header_safe():
                    raise ProxyError(
                        TOKEN_INVALID,
                        "the token's subject, id or scopes cannot be passed on in a header",
                    )
                return principal
            # Only a miss of an opaque token is billable, so only it spends budget.
            self.budget.acquire(client_ip)
            return await self.clerk.verify(kind, token)
        except ProxyError as exc:
            exc.token_type = exc.token_type or kind.token_type
            raise
