"""The verification cache: Principals and rejections by token hash, with single-flight.

- Keys are SHA-256 of the token under a scope naming the Clerk instance (api_url and a
  hash of the secret key): the raw token is never stored, and a config pointing at
  another instance never sees this instance's entries.
- A positive entry is fresh for min(ttl_seconds, expiry - checked) from the moment its
  check started (`checked_at`, before the Clerk call: a slow answer never stretches a
  token's life past one TTL from when Clerk looked at it); a token without expiry for
  ttl_seconds. A hit never extends an entry.
- Its **refresh point** (`refresh_at`) is derived, not stored: in the last
  `refresh_ahead` share of the fresh period, jittered per token by its key. From there a
  request may start a background re-verification (`start`); the verifier decides when.
- With stale_if_error_seconds > 0 a positive entry is kept that much past its freshness
  (never past the token's own expiry): the stale window, where the verifier answers
  from it while one background check runs (`known` returns it).
- Rejections (401s) are cached for negative_ttl_seconds; a rejection that lands for a
  key whose rejections are not cached (JWTs) drops a positive entry instead. Failures of
  our own (503 and the budget's 429) are never cached and leave an entry as it was.
- A verdict worth keeping — an opaque token's, billed by Clerk or an issuer — comes with
  its **realm** (`config.realms`: the digest of the config that judges it): its
  rejections are cached, and the shared level is asked and written within that realm
  only. A JWT's (no realm) is cheap to recompute and stays here.
- One flight per key at a time, misses and background checks alike: concurrent misses
  share it, a caller that goes away does not cancel it for the others, every waiter of a
  failed flight gets the same refusal, and a waiter past its deadline leaves it running
  (it fills the cache for the retry). A JWT's miss that needs no I/O takes no flight
  (`at_once`): verified in the caller, its verdict stored before anything else runs.

Only Principals are cached, never an allow/deny: scopes are checked per request.
Entries are held packed (`entries.PackedTable`, under 100 bytes each) in the two
generations of `generations.Generations`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Protocol

from proxy.auth.cache.entries import Entry, Negative, PackedTable, Positive
from proxy.auth.cache.flights import Flight, Flights, relay, within
from proxy.auth.cache.generations import Generations
from proxy.config import model as config
from proxy.core.errors import TOKEN_INVALID, VERIFICATION_UNAVAILABLE, ProxyError
from proxy.core.principal import Principal
from proxy.observe.metrics import Metrics


class SecondLevel(Protocol):
    """A cache level behind this one, shared with other processes (`proxy.auth.shared`),
    within a realm: entries of another realm are not seen. Its calls never raise, and
    each is bounded."""

    async def lookup(self, key: bytes, realm: bytes) -> Entry | bool:
        """One round trip: its entry for `key`; else True when another process is loading
        it (`follow` waits for that answer), False when this process loads it (then
        `store`s)."""
        ...

    async def follow(self, key: bytes, realm: bytes, wait: float) -> Entry | None:
        """The other process's answer, waited for at most `wait` seconds (and the level's
        own bound); None: this process loads and `store`s."""
        ...

    def store(self, key: bytes, realm: bytes, entry: Entry | None) -> None:
        """What the load gave (None: nothing to keep); called once after every load."""
        ...


def cache_scope(api_url: str, secret_key: str) -> bytes:
    """Names the Clerk instance without holding the key: api_url + a key id."""
    key_id = hashlib.sha256(secret_key.encode()).hexdigest()[:16]
    return f"{api_url}\x00{key_id}\x00".encode()


class VerificationCache:
    def __init__(
        self,
        cfg: config.Cache,
        scope: bytes,
        metrics: Metrics,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._scoped = hashlib.sha256(scope)
        self._metrics = metrics
        self._now = now
        horizon = max(cfg.ttl_seconds + cfg.stale_if_error_seconds, cfg.negative_ttl_seconds, 1.0)
        self._entries: Generations[bytes, Entry] = Generations(
            cfg.max_entries, horizon, now(), PackedTable
        )
        self._flights = Flights()
        # Set by the verifier when configured: the shared level (asked before `load`) and
        # the revocation check (a loaded Principal it denies is a 401).
        self.second: SecondLevel | None = None
        self.denied: Callable[[Principal], bool] | None = None
        self._lead = cfg.ttl_seconds * cfg.refresh_ahead
        # Per process: pods sharing one entry (the shared level) refresh at different points,
        # and the first one's answer spares the others their call.
        self._salt = random.randrange(256)  # noqa: S311 (jitter, not a secret)
        # Bound once: a label lookup per cache hit is measurable on the hot path.
        self._count_hit = metrics.verify_cache.labels("hit")
        self._count_negative_hit = metrics.verify_cache.labels("negative_hit")
        self._count_miss = metrics.verify_cache.labels("miss")

    def key(self, token: str) -> bytes:
        # SHA-256(scope + token), from a copy of the state that has already taken in
        # the scope. 128 bits: collision-free in practice, 16 bytes less per entry.
        digest = self._scoped.copy()
        digest.update(token.encode())
        return digest.digest()[:16]

    def __len__(self) -> int:
        return len(self._entries)

    def positive(self, principal: Principal, checked_at: float) -> Positive | None:
        """The entry for a verification that started at `checked_at`, or None when it must
        not be cached (the token expired, or the answer came too late even for the stale
        window). An answer that came later than the TTL but inside the stale window is a
        stale entry: still the token's last known verdict, never to be thrown away for a
        miss while Clerk is slow."""
        fresh = checked_at + self._cfg.ttl_seconds
        if principal.expires_at is not None:
            fresh = min(fresh, principal.expires_at)
        keep = fresh
        if self._cfg.stale_if_error_seconds > 0:
            keep = fresh + self._cfg.stale_if_error_seconds
            if principal.expires_at is not None:
                keep = min(keep, principal.expires_at)
        if keep <= self._now():
            return None
        return Positive(principal=principal, fresh_until=fresh, keep_until=keep)

    def refresh_at(self, key: bytes, entry: Positive) -> float:
        """When a request should start re-verifying the entry: a point in the last
        `refresh_ahead` share of its fresh period, jittered by the key (a hash: uniform, so
        tokens verified together refresh apart). `fresh_until` when a check could not
        extend it (refresh ahead off, or the fresh period ends at the token's expiry)."""
        lead = self._lead
        expires = entry.principal.expires_at
        if lead <= 0.0 or (expires is not None and entry.fresh_until >= expires):
            return entry.fresh_until
        return entry.fresh_until - lead * (1.0 - (key[15] ^ self._salt) / 512.0)

    def entry(self, key: bytes, now: float) -> Entry | None:
        """What is held for `key` at `now` (a positive entry fresh or in its stale window, or
        a rejection); counts nothing."""
        return self._entries.get(key, now)

    def known(self, key: bytes, now: float) -> Positive | None:
        """The positive entry for `key`, fresh or in its stale window; counts nothing."""
        entry = self._entries.get(key, now)
        return entry if isinstance(entry, Positive) else None

    def fresh(self, key: bytes) -> Principal | None:
        """The cached Principal when a fresh positive entry exists (counted as a hit), else
        None and nothing counted."""
        now = self._now()
        entry = self._entries.get(key, now)
        if isinstance(entry, Positive) and now < entry.fresh_until:
            self._count_hit.inc()
            return entry.principal
        return None

    def in_flight(self, key: bytes) -> bool:
        return key in self._flights

    async def get(
        self,
        key: bytes,
        load: Callable[[], Awaitable[Principal]],
        *,
        realm: bytes | None,
        deadline: float | None = None,
    ) -> Principal:
        """The cached Principal for `key`, or `load()`'s, shared by concurrent callers.
        `realm`: see the module's docstring (None: a JWT's verdict). With a `deadline`, a
        caller waits at most that many seconds for the flight, then gets 503
        `verification_unavailable` while the flight goes on."""
        now = self._now()
        entry = self._entries.get(key, now)
        if isinstance(entry, Negative):
            self._count_negative_hit.inc()
            raise entry.error()
        if entry is not None and now < entry.fresh_until:
            self._count_hit.inc()
            return entry.principal
        flight = self._flights.get(key)
        if flight is not None:
            self._metrics.verify_cache.labels("coalesced").inc()
        else:
            self._count_miss.inc()
            second = self.second
            if second is None or realm is None:
                flight = self.start(key, load, realm=realm)
            else:
                # Another process's verification is followed for half the deadline at
                # most: the other half is this process's own, should it not land.
                follow = math.inf if deadline is None else deadline / 2
                asked = await self._ask(key, load, second, realm, follow)
                if isinstance(asked, Principal):
                    return asked
                flight = asked
        if deadline is None:
            # shield: a caller cancelled mid-wait must not cancel the load for the others.
            return await asyncio.shield(flight)
        if await within(flight, deadline):
            return flight.result()
        self._metrics.verification_deadline_exceeded.inc()
        raise ProxyError(
            VERIFICATION_UNAVAILABLE,
            "verifying this token is taking longer than usual; retry shortly",
            retry_after=max(1, math.ceil(deadline)),
        )

    def start(
        self,
        key: bytes,
        load: Callable[[], Awaitable[Principal]],
        *,
        realm: bytes | None,
    ) -> asyncio.Task[Principal]:
        """Start the one flight for `key` (the caller has checked there is none): its
        answer lands in the cache whoever waits for it, or nobody (a background check)."""
        return self._begin(key, self._load(key, load, realm, self._now(), None, math.inf))

    def _begin(
        self, key: bytes, loading: Coroutine[object, None, Principal]
    ) -> asyncio.Task[Principal]:
        """`loading` (a `_load`) becomes the flight for `key`."""
        flight = asyncio.ensure_future(loading)
        self._flights.add(key, flight)
        return flight

    async def _ask(
        self,
        key: bytes,
        load: Callable[[], Awaitable[Principal]],
        second: SecondLevel,
        realm: bytes,
        follow: float,
    ) -> Principal | asyncio.Task[Principal]:
        """A miss asks the shared level in the caller's own task: on a hit there, the
        common case in a fleet, no task and no waiter (a fifth of a second-level hit's
        CPU: docs/performance.md). Meanwhile a placeholder holds the key's flight, so
        concurrent misses wait on it as on any flight; else the flight starts from what
        the lookup said. The lookup is bounded by `cache.shared.timeout`, which the config
        keeps under the miss deadline."""
        checked_at = self._now()
        pending: Flight = asyncio.get_running_loop().create_future()
        self._flights.add(key, pending)
        try:
            found = await second.lookup(key, realm)
        except BaseException:
            # This caller went away: the flight the others wait on starts all the same.
            if not pending.done():
                relay(
                    self._begin(key, self._load(key, load, realm, checked_at, None, follow)),
                    pending,
                )
            raise
        if pending.done():  # closed meanwhile
            raise ProxyError(VERIFICATION_UNAVAILABLE, "the proxy is shutting down; retry")
        if isinstance(found, bool) or not self._newer(key, found):
            # True: follow the other process; False (or an entry no newer than ours): verify.
            flight = self._begin(
                key, self._load(key, load, realm, checked_at, found is True, follow)
            )
            relay(flight, pending)
            return flight
        try:
            principal = self._adopt(key, found)
        except ProxyError as exc:
            self._flights.settle(key, pending, exc)
            raise
        self._flights.settle(key, pending, principal)
        return principal

    async def _load(
        self,
        key: bytes,
        load: Callable[[], Awaitable[Principal]],
        realm: bytes | None,
        checked_at: float,
        found: Entry | bool | None,
        follow: float,
    ) -> Principal:
        """`found`: what the shared level said already (None: not asked yet); `follow`: how
        long another process's verification may be waited for."""
        # JWTs (no realm) are verified here, cheaper than a round trip.
        second = self.second if realm is not None else None
        if second is not None and realm is not None:
            if found is None:
                found = await second.lookup(key, realm)
            if found is True:
                found = await second.follow(key, realm, follow)
            # Not newer than what is held here (due for its re-check): Clerk decides, and
            # what it says is written back over it for the other processes.
            if isinstance(found, Entry) and self._newer(key, found):
                return self._adopt(key, found)
        try:
            principal = await load()
        except ProxyError as exc:
            rejected = self._refused(key, exc, realm)
            if second is not None and realm is not None:
                second.store(key, realm, rejected)
            raise
        except BaseException:
            if second is not None and realm is not None:
                second.store(key, realm, None)
            raise
        now = self._now()
        entry = self.positive(principal, checked_at)
        denied = self.denied is not None and self.denied(principal)
        if second is not None and realm is not None:
            # A revoked token's entry stays out of the shared level (it was dropped there).
            second.store(key, realm, None if denied else entry)
        if denied:
            raise self._revoked(key, principal, now)
        self._keep(key, entry, now)
        return principal

    def at_once(
        self,
        key: bytes,
        entry: Entry | None,
        now: float,
        verify: Callable[[], Principal | None],
    ) -> Principal | None:
        """A JWT's miss (no realm) verified in the caller, for a `verify` that needs no I/O
        (its key is held): no task, no deadline timer, no waiter — and no second flight
        either, since nothing here yields to a concurrent miss of the same token before
        its verdict is stored. `entry`: what the caller found for `key` at `now` (`entry`;
        looked up once: nothing has yielded since). None: `get`'s flight decides (the key
        must be fetched, or a flight for `key` is out already: a miss waiting for that
        fetch, joined there)."""
        if isinstance(entry, Negative):
            self._count_negative_hit.inc()
            raise entry.error()
        if key in self._flights:
            return None
        try:
            principal = verify()
        except ProxyError as exc:
            self._count_miss.inc()
            self._refused(key, exc, None)
            raise
        if principal is None:
            return None
        self._count_miss.inc()
        if self.denied is not None and self.denied(principal):
            raise self._revoked(key, principal, now)
        self._keep(key, self.positive(principal, now), now)
        return principal

    def _refused(self, key: bytes, exc: ProxyError, realm: bytes | None) -> Negative | None:
        """A load's refusal: a rejection (401) is cached for a verdict with a realm, and
        drops the key's positive entry otherwise (a JWT's: never served from an older
        one); our own failures leave the entry as it was. The cached rejection, if any."""
        if exc.status != 401:
            return None
        now = self._now()
        until = now + self._cfg.negative_ttl_seconds
        if realm is None or until <= now:
            self._entries.pop(key)
            return None
        rejected = Negative(
            code=exc.code, message=exc.message, token_type=exc.token_type, keep_until=until
        )
        self._entries.set(key, rejected, now)
        return rejected

    def _keep(self, key: bytes, entry: Positive | None, now: float) -> None:
        if entry is not None:
            self._entries.set(key, entry, now)
        else:
            self._entries.pop(key)

    def _newer(self, key: bytes, shared: Entry) -> bool:
        """Whether the shared level's entry is news to this process: a rejection, or a
        positive entry fresh for longer than the one held here."""
        held = self._entries.get(key, self._now())
        return not (
            isinstance(shared, Positive)
            and isinstance(held, Positive)
            and shared.fresh_until <= held.fresh_until
        )

    def _adopt(self, key: bytes, entry: Entry) -> Principal:
        """Take an entry from the second level with the deadlines it was written with,
        never later than this process would have set them itself."""
        now = self._now()
        if isinstance(entry, Negative):
            keep = min(entry.keep_until, now + self._cfg.negative_ttl_seconds)
            self._entries.set(key, dataclasses.replace(entry, keep_until=keep), now)
            raise entry.error()
        principal = entry.principal
        if self.denied is not None and self.denied(principal):
            raise self._revoked(key, principal, now)
        fresh = min(entry.fresh_until, now + self._cfg.ttl_seconds)
        keep = min(entry.keep_until, fresh + self._cfg.stale_if_error_seconds)
        self._entries.set(
            key, Positive(principal=principal, fresh_until=fresh, keep_until=keep), now
        )
        return principal

    def _revoked(self, key: bytes, principal: Principal, now: float) -> ProxyError:
        self._entries.pop(key)
        refusal = ProxyError(
            TOKEN_INVALID, "the token has been revoked", token_type=principal.token_type
        )
        until = now + self._cfg.negative_ttl_seconds
        if until > now:
            rejected = Negative(
                code=refusal.code,
                message=refusal.message,
                token_type=refusal.token_type,
                keep_until=until,
            )
            self._entries.set(key, rejected, now)
        return refusal

    def drop(
        self,
        token_ids: Collection[str],
        subjects: Collection[str],
        which: Callable[[Principal], bool],
    ) -> tuple[list[bytes], float | None]:
        """Drop the positive entries of revoked token ids or subjects that `which` picks
        (the issuer is part of a revocation): their keys, and the latest expiry among them
        (None when none was found or one never expires). One pass over the table for all."""
        dropped: list[bytes] = []
        latest: float | None = None
        unbounded = False
        for table in self._entries.tables():
            assert isinstance(table, PackedTable)
            for found, entry in table.matching(token_ids, subjects):
                if not which(entry.principal):
                    continue
                table.pop(found)
                dropped.append(found)
                expires = entry.principal.expires_at
                if expires is None:
                    unbounded = True
                elif latest is None or expires > latest:
                    latest = expires
        return dropped, None if unbounded else latest

    async def idle(self) -> None:
        """Wait until no flight is out (tests and simulations)."""
        await self._flights.idle()

    async def close(self) -> None:
        await self._flights.close()
