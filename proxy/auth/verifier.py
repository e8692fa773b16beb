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
from proxy.auth.issuers import Issuers, IssuerVerifier, not_clerk
from proxy.auth.jwks import Jwks
from proxy.auth.shared.cluster import Cluster, Outcome, Revocations
from proxy.auth.shared.metrics import shared_metrics
from proxy.auth.tokens import TokenKind
from proxy.config.load import Config
from proxy.core.errors import TOKEN_INVALID, TOKEN_TYPE_MISMATCH, ProxyError
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
        scope = cache_scope(ck.api_url, ck.secret_key)
        self.cache = VerificationCache(config.cache, scope, metrics, now=now)
        self.budget = VerificationBudget(config.verification_budget, metrics, now=now)
        # Connection memos hold while this is the object they were filled for: a
        # revocation replaces it, so no memo answers for a revoked token.
        self._memo: object = object()
        self.revocations = Revocations(
            config.revocation.default_ttl_seconds,
            self._drop,
            shared_metrics(metrics.registry),
            now=now,
        )
        self.cache.denied = self.revocations.denies
        self.cluster: Cluster | None = None
        if config.cache.shared is not None:
            self.cluster = Cluster(config, scope, metrics, self.revocations.apply)
            self.revocations.cluster = self.cluster
            self.cache.second = self.cluster.level
        self.issuers = Issuers(config.issuers, ck.issuer, session, metrics, now=now)
        # The cache's own `hit` counter, bound here: a memo hit is counted without a call
        # into the (uncompiled) cache.
        self._memo_hits = metrics.verify_cache.labels("hit")

    async def start(self) -> None:
        """Nothing to warm: JWKS is fetched on first use, so Clerk being down at start-up
        delays nothing but JWT verification. The cluster's channel is listened to in the
        background (Redis being away delays nothing either)."""
        if self.cluster is not None:
            self.cluster.start()

    async def close(self) -> None:
        await self.cache.close()
        if self.cluster is not None:
            await self.cluster.close()

    def _drop(self, kind: str, value: str) -> tuple[list[bytes], float | None]:
        self._memo = object()
        if kind == "token_id":
            return self.cache.drop(value, None)
        return self.cache.drop(None, value)

    async def revoke(
        self, kind: str, value: str, *, ttl: float | None, reason: str, at_clerk: bool
    ) -> Outcome:
        """Refuse a token id or subject here and, with the shared level, everywhere;
        `at_clerk` also revokes the token at Clerk (an M2M token or API key, by id)."""
        outcome = await self.revocations.revoke(kind, value, ttl=ttl)
        if at_clerk:
            outcome.clerk = await self.clerk.revoke(value, reason)
        return outcome

    def cached(self, token: str, recent: Recent | None = None) -> Principal | None:
        if (
            recent is not None
            and recent.owner is self._memo
            and recent.token == token
            and self._now() < recent.fresh_until
        ):
            self._memo_hits.inc()
            return recent.principal
        entry = self.cache.fresh_entry(self.cache.key(token))
        if entry is None:
            return None
        if recent is not None:
            recent.owner, recent.token = self._memo, token
            recent.principal, recent.fresh_until = entry.principal, entry.fresh_until
        return entry.principal

    async def verify(self, token: str, client_ip: str) -> Principal:
        key = self.cache.key(token)
        # Only well-formed tokens are ever cached, so a hit needs no classification.
        cached = self.cache.fresh(key)
        if cached is not None:
            return cached
        if self.issuers:
            issuer, header, foreign = self.issuers.route(token)
            if issuer is not None and header is not None:
                return await self.cache.get(
                    key, lambda: issuer.verify_jwt(token, header), cache_rejections=False
                )
            if issuer is not None:
                return await self.cache.get(key, lambda: self._introspect(issuer, token, client_ip))
            if foreign is not None:
                return await self._foreign(key, token, client_ip, foreign)
        kind = tokens.classify(token)
        # A JWT refusal is cheap to recompute and may stop being one (JWKS rotation,
        # nbf reached), so only Clerk's answers are negative-cached.
        return await self.cache.get(
            key,
            lambda: self._load(kind, token, client_ip),
            cache_rejections=not kind.is_jwt,
        )

    async def _foreign(self, key: bytes, token: str, client_ip: str, iss: str) -> Principal:
        """A JWT naming an issuer that is not configured, while `clerk.issuer` is unset:
        Clerk's to judge; if it is not Clerk's either, the refusal names the issuer."""
        try:
            kind = tokens.classify(token)
            return await self.cache.get(
                key, lambda: self._load(kind, token, client_ip), cache_rejections=False
            )
        except ProxyError as exc:
            if exc.code not in (TOKEN_INVALID, TOKEN_TYPE_MISMATCH):
                raise
            raise not_clerk(iss, self.issuers.served) from None

    async def _introspect(self, issuer: IssuerVerifier, token: str, client_ip: str) -> Principal:
        """An opaque token of another issuer: billable like Clerk's, so it spends budget."""
        assert issuer.introspector is not None
        self.budget.acquire(client_ip)
        return await issuer.introspector.principal(token)

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
            # Only a miss of an opaque token is billable, so only it spends budget: the
            # cluster's when it is shared and reachable, else this process's.
            cluster = self.cluster
            if cluster is not None and cluster.budget is not None:
                await cluster.budget.acquire(client_ip, self.budget.acquire)
            else:
                self.budget.acquire(client_ip)
            return await self.clerk.verify(kind, token)
        except ProxyError as exc:
            exc.token_type = exc.token_type or kind.token_type
            raise
