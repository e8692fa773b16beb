"""`Cluster`: what one process shares with the others through Redis/Valkey, built from
`cache.shared` — the connection, the second level, the budget and the channel — and
`Revocations`, which works with it or, for a lone sidecar, without it.

The verifier holds one of each and hooks them into the cache (`second`, `denied`,
`drop`) and the cost guard (`Cluster.budget`); nothing here is on a first-level hit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from proxy.auth.shared import codec, revocation
from proxy.auth.shared.budget import SharedBudget
from proxy.auth.shared.connection import Connection
from proxy.auth.shared.events import Events, revoked_message
from proxy.auth.shared.level import SharedLevel, namespace
from proxy.auth.shared.metrics import SharedMetrics, shared_metrics
from proxy.auth.shared.revocation import Revocation, Revoked, issuer_of
from proxy.config.model import Config
from proxy.core.principal import Principal
from proxy.observe.metrics import Metrics

log = logging.getLogger("proxy.shared")

# How long closing the shared level may take at shutdown or reload.
CLOSE_SECONDS = 3.0


class Cluster:
    def __init__(
        self,
        config: Config,
        scope: bytes,
        metrics: Metrics,
        revocations: Revocations,
        *,
        realms: Sequence[bytes],
        clients: Any = None,
    ) -> None:
        shared = config.cache.shared
        assert shared is not None
        self.metrics = shared_metrics(metrics.registry)
        self.connection = Connection(shared, self.metrics, clients=clients)
        self.namespace = namespace(shared.key_prefix, scope)
        self.revoked_key = revocation.set_key(self.namespace)
        self._revocations = revocations
        self.events = Events(
            self.connection.listener,
            self.namespace + ":events",
            self.metrics,
            on_subscribed=self._resync,
            on_revoked=self._heard,
            resync_seconds=shared.resync_seconds,
            bound=shared.connect_timeout + 1.0,
        )
        # The lock outlives the longest verification (a timeout and the one retry).
        lock = 2 * config.clerk.timeout + 1.0
        mac = codec.mac_key(config.clerk.secret_key, scope)
        self._signing = revocation.signing_key(mac)
        # The signed text of each live revocation verified or signed here: a resync checks
        # a MAC once per member, not once per member per resync.
        self._texts: dict[Revocation, bytes] = {}
        self.level = SharedLevel(
            self.connection,
            self.events,
            self.namespace,
            mac,
            lock_seconds=lock,
            realms=realms,
        )
        self.budget: SharedBudget | None = None
        if shared.budget and config.verification_budget.enabled:
            self.budget = SharedBudget(
                self.connection,
                self.namespace,
                config.verification_budget,
                lambda scope: metrics.budget_rejections.labels(scope).inc(),
            )
        self._publish = self.connection.client.register_script(revocation.REVOKE)

    async def start(self) -> None:
        """Listen to the channel, and return once the revocations were read the first time:
        a process whose listener opened before that served a revoked token it could have
        known (seen in CI: a process started after a revocation). Redis not answering
        holds the start for one subscription's bound at most; the set is then read on
        connecting, and the warning says so."""
        self.events.start()
        try:
            async with asyncio.timeout(self.events.bound):
                await self.events.connected.wait()
        except TimeoutError:
            log.warning(
                "serving before the shared level's revocations were read; they are read "
                "once it answers",
                extra={"seconds": self.events.bound},
            )

    async def close(self) -> None:
        """Stop listening, finish the background writes, close the clients — within
        `CLOSE_SECONDS`: a Redis that stopped answering (a frozen node, a partition) must
        not hold the process's shutdown, which what is left of it would only delay."""
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.events.close()
                await self.level.close()
                await self.connection.close()
        except TimeoutError:
            log.warning(
                "shared cache did not close in time; its connections are dropped",
                extra={"seconds": CLOSE_SECONDS},
            )

    def _text(self, r: Revocation) -> bytes:
        text = self._texts.get(r)
        if text is None:
            if len(self._texts) >= 2 * revocation.MAX_REVOKED:
                self._texts.clear()
            text = self._texts[r] = revocation.sign(self._signing, r).encode("ascii")
        return text

    def _verified(
        self, raw: list[bytes], now: float, known: dict[bytes, Revocation]
    ) -> tuple[list[Revocation], list[bytes]]:
        """The revocations among `raw` (members) that carry this instance's MAC, and what
        did not (counted); `known`: texts verified before, by text."""
        found: list[Revocation] = []
        forged: list[bytes] = []
        for text in raw:
            r = known.get(text)
            if r is None:
                r = revocation.verify(self._signing, text, now)
                if r is None:
                    forged.append(text)
                    continue
                self._texts[r] = text
                known[text] = r
            found.append(r)
        if forged:
            self.metrics.revocations_refused.labels("resync").inc(len(forged))
        return found, forged

    def _heard(self, raw: list[bytes]) -> None:
        now = time.time()
        # A message is verified on its own (no table of known texts built for it).
        found = [r for r in (revocation.verify(self._signing, m, now) for m in raw) if r]
        if len(found) < len(raw):
            self.metrics.revocations_refused.labels("message").inc(len(raw) - len(found))
        if found:
            self._revocations.apply_all(found, "message")

    async def _resync(self) -> None:
        """Read the set back, and make it whole again: what fails its MAC is removed, and
        this process's live revocations that Redis lost (restarted empty, flushed, a member
        removed) are written back, so a process started later still learns them."""
        now = time.time()
        self._texts = {r: t for r, t in self._texts.items() if r.until > now}
        # The command client, not the listener: in a Cluster the set lives on its slot's node.
        client = self.connection.client
        known = {text: r for r, text in self._texts.items()}
        stored: set[bytes] = set()
        start = 0
        while True:
            page = await revocation.read_page(client, self.revoked_key, now, start)
            found, forged = self._verified(page, now, known)
            if forged:
                await client.zrem(self.revoked_key, *forged)
            self._revocations.apply_all(found, "resync")
            stored.update(page)
            if len(page) < revocation.PAGE:
                break
            start += len(page) - len(forged)
        lost = [
            (text, r.until)
            for r in self._revocations.revoked.items()
            if (text := self._text(r)) not in stored
        ]
        for at in range(0, len(lost), revocation.PAGE):
            await client.zadd(self.revoked_key, dict(lost[at : at + revocation.PAGE]))
        if lost:
            log.warning(
                "revocations the shared level had lost written back", extra={"count": len(lost)}
            )

    async def publish(self, r: Revocation) -> int:
        """Store and announce a revocation; how many processes heard it. Raises when Redis
        cannot be reached (the operator must know it did not propagate)."""
        signed = self._text(r)
        args: list[str | float | bytes] = [
            signed,
            r.until,
            time.time(),
            self.events.channel,
            revoked_message(signed),
        ]
        heard = await self.connection.admin(
            lambda c: self._publish(keys=[self.revoked_key], args=args, client=c)
        )
        return int(heard)


@dataclass
class Outcome:
    """What a revocation did, for the operator."""

    revocation: Revocation
    dropped: int
    propagated: bool
    receivers: int | None
    error: str | None = None
    clerk: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        r = self.revocation
        return {
            "revoked": {"kind": r.kind, "value": r.value, "until": r.until, "issuer": r.issuer},
            "dropped_here": self.dropped,
            "propagated": self.propagated,
            "receivers": self.receivers,
            **({"clerk": self.clerk} if self.clerk is not None else {}),
        }


# Drops the first-level entries of the given token ids and subjects that the predicate
# picks: their keys, and the latest expiry among them (None: none found, or one never
# expires).
Drop = Callable[
    [Collection[str], Collection[str], Callable[[Principal], bool]],
    tuple[list[bytes], float | None],
]


class Revocations:
    """Revocations in this process, and through the cluster when there is one."""

    def __init__(
        self,
        default_ttl: float,
        drop: Drop,
        metrics: SharedMetrics,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.revoked = Revoked(now=now)
        self._default_ttl = default_ttl
        self._drop = drop
        self._metrics = metrics
        self._now = now
        self.cluster: Cluster | None = None

    def denies(self, principal: Principal) -> bool:
        """Whether `principal`'s token id or subject is revoked here (counted)."""
        if self.revoked.denies(principal):
            self._metrics.revoked_refusals.inc()
            return True
        return False

    def apply_all(self, batch: list[Revocation], source: str) -> int:
        """Refuse each here until its end, and drop the first-level entries they end in
        one pass (however many arrived together); how many entries were dropped."""
        turned_away = self.revoked.turned_away
        added = [r for r in batch if self.revoked.add(r)]
        if self.revoked.turned_away > turned_away:
            log.error(
                "revocations not held: this process holds the most it may",
                extra={
                    "count": self.revoked.turned_away - turned_away,
                    "limit": revocation.MAX_REVOKED,
                },
            )
        if not added:
            return 0
        for r in added:
            self._metrics.revocations.labels(source, r.kind).inc()
            if source != "resync":
                extra = {"issuer": r.issuer, "kind": r.kind, "until": r.until, "source": source}
                log.info("revoked", extra=extra)
        token_ids = {r.value for r in added if r.kind == "token_id"}
        subjects = {r.value for r in added if r.kind == "subject"}
        return self._forget(token_ids, subjects, self.revoked.denies)[0]

    def _forget(
        self,
        token_ids: Collection[str],
        subjects: Collection[str],
        which: Callable[[Principal], bool],
    ) -> tuple[int, float | None]:
        """Drop those entries from the first level, and the same keys from the shared
        level: (how many, the latest expiry among them)."""
        keys, expiry = self._drop(token_ids, subjects, which)
        if keys:
            self._metrics.revoked_entries.inc(len(keys))
            if self.cluster is not None:
                self.cluster.level.forget(keys)
        return len(keys), expiry

    async def revoke(self, issuer: str, kind: str, value: str, *, ttl: float | None) -> Outcome:
        """An operator's revocation: here at once, then stored and announced."""
        now = self._now()
        dropped = 0
        if ttl is not None:
            until = now + ttl
        elif kind == "token_id":
            # Until the token's own expiry when an entry here knows it; an id nothing here
            # has seen (and a subject) for the default time.
            dropped, expiry = self._forget(
                (value,), (), lambda p: issuer_of(p) == issuer and p.token_id == value
            )
            until = expiry if expiry is not None and expiry > now else now + self._default_ttl
        else:
            until = now + self._default_ttl
        r = Revocation(issuer, kind, value, until)
        turned_away = self.revoked.turned_away
        dropped += self.apply_all([r], "admin")
        if self.revoked.turned_away > turned_away:
            why = f"not applied: this process holds {revocation.MAX_REVOKED} live revocations"
            return Outcome(r, dropped, False, None, why)
        if self.cluster is None:
            return Outcome(r, dropped, propagated=False, receivers=None)
        try:
            heard = await self.cluster.publish(r)
        except (RedisError, OSError, TimeoutError) as exc:
            log.error(
                "revocation applied in this process only: the shared level is unreachable",
                extra={"kind": kind, "error": type(exc).__name__},
            )
            why = f"applied in this process only: the shared level is unreachable ({type(exc).__name__})"
            return Outcome(r, dropped, False, None, why)
        return Outcome(r, dropped, propagated=True, receivers=heard)
