"""`ClerkVerifier`: classify → cache → budget → Clerk or JWKS → Principal.

Known tokens never wait for Clerk: a fresh entry is a hit; past its refresh point (or in
its stale window) it is still the answer, and one background re-verification starts.
Unknown tokens wait for their flight up to the miss deadline; a JWT whose key is held
needs none, and is verified in the caller.

Metrics counted here: verify_cache and the Clerk request metrics. auth_decisions is
the request path's (app.py), which sees every decision including policy refusals.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import aiohttp

from proxy.auth import tokens
from proxy.auth.budget import VerificationBudget
from proxy.auth.cache.entries import Positive
from proxy.auth.cache.store import VerificationCache, cache_scope
from proxy.auth.clerk.api import ClerkClient
from proxy.auth.clerk.classes import check_class_claims, jwt_principal
from proxy.auth.clerk.keys import Jwks
from proxy.auth.issuers.routing import Issuers, IssuerVerifier, not_clerk
from proxy.auth.jws import Unverified, peek
from proxy.auth.shared.cluster import Cluster, Outcome, Revocations
from proxy.auth.shared.metrics import shared_metrics
from proxy.auth.tokens import TokenKind
from proxy.config.load import Config
from proxy.config.realms import clerk_realm, issuer_realm
from proxy.core.background import Background
from proxy.core.errors import TOKEN_INVALID, TOKEN_TYPE_MISMATCH, ProxyError
from proxy.core.principal import Principal, Recent
from proxy.observe.metrics import Metrics

__all__ = ["ClerkVerifier", "jwt_principal"]

# After a background check that failed (not a rejection), the next one for that token
# waits this long: one bad answer must not become one Clerk call per request.
CHECK_PAUSE: Final = 1.0
MAX_PAUSED: Final = 10_000

# A token's verification (`ClerkVerifier._loader`): the load a flight awaits, the realm of
# its verdict, the gate of the call it makes, and for a JWT the same with the keys held now.
Loader = tuple[
    Callable[[], Awaitable[Principal]],
    bytes | None,
    Callable[[], ProxyError | None] | None,
    Callable[[], Principal | None] | None,
]


class ClerkVerifier:
    """The cache answers known tokens at once — fresh, due for a refresh, or stale — and
    their re-verification runs in the background, one flight per token, paid from the
    budget's reserve for known tokens; an unknown token waits for its own flight at most
    `clerk.miss_deadline`, paid by its source."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        ck = config.clerk
        self._clerk_cfg = ck
        self._now = now
        self._metrics = metrics
        self.clerk = ClerkClient(ck, session, metrics, now=now, monotonic=monotonic)
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
        # The realm of each judge's verdicts (`config.realms`): Clerk's, and each issuer's
        # by name.
        self._clerk_realm = clerk_realm(ck)
        self._realms = {cfg.name: issuer_realm(cfg) for cfg in config.issuers}
        self.cluster: Cluster | None = None
        if config.cache.shared is not None:
            self.cluster = Cluster(
                config,
                scope,
                metrics,
                self.revocations,
                realms=[self._clerk_realm, *self._realms.values()],
            )
            self.revocations.cluster = self.cluster
            self.cache.second = self.cluster.level
        self.issuers = Issuers(config.issuers, ck.issuer, session, metrics, now=now)
        self._deadline = ck.miss_deadline
        metrics.verification_deadline.set(ck.miss_deadline)
        # Bound once: a label lookup per cache hit is measurable on the hot path.
        self._hits = metrics.verify_cache.labels("hit")
        self._stale = metrics.verify_cache.labels("stale")
        # Keys whose last background check failed, with when the next may start.
        self._paused: dict[bytes, float] = {}
        # Issuers' discovery and keys being fetched at start (`start`), held till done.
        self._warming = Background()

    async def start(self) -> None:
        """Clerk's JWKS is fetched on first use, so Clerk being down at start-up delays
        nothing but JWT verification (other issuers' keys: `warm`). The shared level's
        revocations are read before the listeners open (Redis being away delays the start
        by one subscription's bound, `connect_timeout` + 1 s)."""
        if self.cluster is not None:
            await self.cluster.start()

    def warm(self) -> None:
        """Other issuers' discovery and keys fetched now, in the background (the process
        calls it once its listeners are bound, and after a reload that rebuilt this)."""
        for issuer in self.issuers.by_iss.values() if self.issuers else ():
            self._warming.spawn(issuer.warm())

    async def close(self) -> None:
        self._warming.cancel()
        await self.cache.close()
        if self.cluster is not None:
            await self.cluster.close()

    def _drop(
        self,
        token_ids: Collection[str],
        subjects: Collection[str],
        which: Callable[[Principal], bool],
    ) -> tuple[list[bytes], float | None]:
        self._memo = object()
        return self.cache.drop(token_ids, subjects, which)

    async def revoke(
        self,
        issuer: str,
        kind: str,
        value: str,
        *,
        ttl: float | None,
        reason: str,
        at_clerk: bool,
    ) -> Outcome:
        """Refuse one issuer's token id or subject here and, with the shared level,
        everywhere; `at_clerk` also revokes the token at Clerk (an M2M token or API key,
        by id; the caller has checked the issuer is Clerk)."""
        outcome = await self.revocations.revoke(issuer, kind, value, ttl=ttl)
        if at_clerk:
            outcome.clerk = await self.clerk.revoke(value, reason)
        return outcome

    def cached(self, token: str, recent: Recent | None = None) -> Principal | None:
        now = self._now()
        if (
            recent is not None
            and recent.owner is self._memo
            and recent.token == token
            and now < recent.fresh_until
        ):
            self._hits.inc()
            return recent.principal
        key = self.cache.key(token)
        entry = self.cache.known(key, now)
        return None if entry is None else self._known(key, entry, token, recent, now)

    async def verify(self, token: str, client_ip: str) -> Principal:
        key = self.cache.key(token)
        now = self._now()
        # One lookup for both: the answer when the token is known, else what a JWT's miss
        # verified at once must see (a cached rejection).
        entry = self.cache.entry(key, now)
        if isinstance(entry, Positive):
            return self._known(key, entry, token, None, now)
        load, realm, _, at_once = self._loader(token, client_ip)
        if at_once is not None:
            principal = self.cache.at_once(key, entry, now, at_once)
            if principal is not None:
                return principal
        return await self.cache.get(key, load, realm=realm, deadline=self._deadline)

    def _loader(self, token: str, client_ip: str | None) -> Loader:
        """How to verify `token` (for a miss, or a known token's background check:
        `client_ip` None); the realm of the verdict when that is billable (an opaque
        token: Clerk's or another issuer's introspection), which has its rejections
        cached and is shared in that realm, else None; the gate of the call it makes,
        when it is one (Clerk's verify, an issuer's introspection); and, for a JWT, its
        verification with the keys held now (None when its key is not held), which a miss
        runs in its own task before any flight. A JWT refusal is not cached: it is cheap
        to recompute and may stop being one (JWKS rotation, nbf reached)."""
        parts: Unverified | None = None
        if self.issuers:
            issuer, parts, foreign = self.issuers.route(token)
            if issuer is not None and parts is not None:
                found, read = issuer, parts
                return (
                    (lambda: found.verify_jwt(token, read)),
                    None,
                    None,
                    (lambda: found.verify_held(token, read)),
                )
            if issuer is not None:
                judged_by = self._realms[issuer.cfg.name]
                return (
                    (lambda: self._introspect(issuer, token, client_ip)),
                    judged_by,
                    issuer.http.held,
                    None,
                )
            if foreign is not None:
                return (lambda: self._foreign(token, client_ip, foreign, parts)), None, None, None
        if parts is None and token.count(".") == 2:
            parts = peek(token)  # read once, for the classification and the check alike
        kind = tokens.classify(token, parts)
        if kind.is_jwt:
            return (
                (lambda: self._load(kind, token, client_ip, parts)),
                None,
                None,
                (lambda: self._jwt_held(kind, token, parts)),
            )
        return (
            (lambda: self._load(kind, token, client_ip, None)),
            self._clerk_realm,
            self.clerk.held,
            None,
        )

    async def _foreign(
        self, token: str, client_ip: str | None, iss: str, parts: Unverified | None
    ) -> Principal:
        """A JWT naming an issuer that is not configured, while `clerk.issuer` is unset:
        Clerk's to judge; if it is not Clerk's either, the refusal names the issuer."""
        try:
            return await self._load(tokens.classify(token, parts), token, client_ip, parts)
        except ProxyError as exc:
            if exc.code not in (TOKEN_INVALID, TOKEN_TYPE_MISMATCH):
                raise
            raise not_clerk(iss, self.issuers.served) from None

    async def _introspect(
        self, issuer: IssuerVerifier, token: str, client_ip: str | None
    ) -> Principal:
        """An opaque token of another issuer: billable like Clerk's, so it spends budget
        (a known token's background check: already paid from the reserve) — unless the
        issuer's gate holds its calls, which refuses the miss before it spends any."""
        assert issuer.introspector is not None
        if client_ip is not None:
            held = issuer.http.held()
            if held is not None:
                raise held
            self.budget.acquire(client_ip)
        return await issuer.introspector.principal(token)

    def _known(
        self, key: bytes, entry: Positive, token: str, recent: Recent | None, now: float
    ) -> Principal:
        """The answer when the cache knows the token as valid (`entry`): fresh, due for a
        refresh, or stale (the last two start one background check)."""
        if now < entry.fresh_until:
            self._hits.inc()
            refresh_at = self.cache.refresh_at(key, entry)
            if now < refresh_at:
                # The memo answers until the refresh point, so that a request past it
                # reaches the check below.
                if recent is not None:
                    recent.owner, recent.token = self._memo, token
                    recent.principal, recent.fresh_until = entry.principal, refresh_at
            else:
                self._recheck(key, token, "ahead", now)
            return entry.principal
        # The stale window: answered at once, while one background check runs.
        self._stale.inc()
        self._recheck(key, token, "stale", now)
        return entry.principal

    def _recheck(self, key: bytes, token: str, trigger: str, now: float) -> None:
        """Start the one background re-verification of a known token, unless one is in
        flight, its last one failed a moment ago, or Clerk or the budget say wait."""
        if self.cache.in_flight(key):
            return
        paused = self._paused.get(key)
        if paused is not None:
            if now < paused:
                return
            del self._paused[key]
        load, realm, held, _ = self._loader(token, None)
        # Opaque tokens' checks (those with a realm) are billable, and pass the gate of
        # Clerk or their issuer.
        billable = realm is not None
        if (held is not None and held() is not None) or (billable and self.budget.known_wait() > 0):
            self._metrics.verify_background.labels(trigger, "deferred").inc()
            return
        flight = self.cache.start(key, load, realm=realm)
        flight.add_done_callback(self._checked(key, trigger))

    def _checked(self, key: bytes, trigger: str) -> Callable[[asyncio.Task[Principal]], None]:
        def done(task: asyncio.Task[Principal]) -> None:
            if task.cancelled():
                return
            error = task.exception()
            if error is None:
                result = "valid"
            elif isinstance(error, ProxyError) and error.status == 401:
                result = "rejected"  # the entry is gone: the next request is refused
            else:
                result = "unavailable"  # the entry stays; no new check for a moment
                if len(self._paused) >= MAX_PAUSED:
                    self._paused.clear()
                self._paused[key] = self._now() + CHECK_PAUSE
            self._metrics.verify_background.labels(trigger, result).inc()

        return done

    def _jwt_held(self, kind: TokenKind, token: str, parts: Unverified | None) -> Principal | None:
        """A Clerk JWT verified with the keys held now; None: its key is not held."""
        try:
            claims = self.jwks.verify_held(token, kind.token_type, parts)
            return None if claims is None else self._jwt_principal(kind, claims)
        except ProxyError as exc:
            exc.token_type = exc.token_type or kind.token_type
            raise

    def _jwt_principal(self, kind: TokenKind, claims: dict[str, Any]) -> Principal:
        check_class_claims(kind, claims, self._clerk_cfg)
        principal = jwt_principal(kind, claims)
        if not principal.header_safe():
            raise ProxyError(
                TOKEN_INVALID,
                "the token's subject, id or scopes cannot be passed on in a header",
            )
        return principal

    async def _load(
        self, kind: TokenKind, token: str, client_ip: str | None, parts: Unverified | None
    ) -> Principal:
        """Verify; `client_ip` None: a known token's background check, already paid for."""
        try:
            if kind.is_jwt:
                claims = await self.jwks.verify(token, kind.token_type, parts)
                return self._jwt_principal(kind, claims)
            if client_ip is not None:
                # While Clerk asked us to wait, a miss is refused before it spends budget.
                held = self.clerk.held()
                if held is not None:
                    raise held
                # Only a miss of an opaque token is billable, so only it spends budget: the
                # cluster's when it is shared and reachable, else this process's. A known
                # token's background check was paid from this process's reserve.
                cluster = self.cluster
                if cluster is not None and cluster.budget is not None:
                    source = self.budget.source(client_ip)
                    await cluster.budget.acquire(source, self.budget.acquire)
                else:
                    self.budget.acquire(client_ip)
            return await self.clerk.verify(kind, token)
        except ProxyError as exc:
            exc.token_type = exc.token_type or kind.token_type
            raise
