"""`Cluster`: what one process shares with the others through Redis/Valkey, built from
`cache.shared` — the connection, the second level, the budget and the channel — and
`Revocations`, which works with it or, for a lone sidecar, without it.

The verifier holds one of each and hooks them into the cache (`second`, `denied`,
`drop`) and the cost guard (`Cluster.budget`); nothing here is on a first-level hit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from proxy.auth.shared import codec, revocation
from proxy.auth.shared.budget import SharedBudget
from proxy.auth.shared.connection import Connection
from proxy.auth.shared.events import Events, revoked_message
from proxy.auth.shared.level import SharedLevel, namespace
from proxy.auth.shared.metrics import SharedMetrics, shared_metrics
from proxy.auth.shared.revocation import Revoked
from proxy.config.model import Config
from proxy.core.principal import Principal
from proxy.observe.metrics import Metrics

log = logging.getLogger("proxy.shared")


class Cluster:
    def __init__(
        self,
        config: Config,
        scope: bytes,
        metrics: Metrics,
        on_revoked: Callable[[str, str, float, str], object],
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
        self.events = Events(
            self.connection.listener,
            self.namespace + ":events",
            self.metrics,
            on_subscribed=self._resync,
            on_revoked=on_revoked,
            resync_seconds=shared.resync_seconds,
            bound=shared.connect_timeout + 1.0,
        )
        # The lock outlives the longest verification (a timeout and the one retry).
        lock = 2 * config.clerk.timeout + 1.0
        self.level = SharedLevel(
            self.connection,
            self.events,
            self.namespace,
            codec.mac_key(config.clerk.secret_key, scope),
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
        self._on_revoked = on_revoked
        self._publish = self.connection.client.register_script(revocation.REVOKE)

    def start(self) -> None:
        self.events.start()

    async def close(self) -> None:
        await self.events.close()
        await self.level.close()
        await self.connection.close()

    async def _resync(self) -> None:
        # The command client, not the listener: in a Cluster the set lives on its slot's node.
        rows = await revocation.read_all(self.connection.client, self.revoked_key, time.time())
        for kind, value, until in rows:
            self._on_revoked(kind, value, until, "resync")

    async def publish(self, kind: str, value: str, until: float) -> int:
        """Store and announce a revocation; how many processes heard it. Raises when Redis
        cannot be reached (the operator must know it did not propagate)."""
        args: list[str | float | bytes] = [
            revocation.member(kind, value),
            until,
            time.time(),
            self.events.channel,
            revoked_message(kind, value, until),
        ]
        heard = await self.connection.admin(
            lambda c: self._publish(keys=[self.revoked_key], args=args, client=c)
        )
        return int(heard)


@dataclass
class Outcome:
    """What a revocation did, for the operator."""

    kind: str
    value: str
    until: float
    dropped: int
    propagated: bool
    receivers: int | None
    error: str | None = None
    clerk: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        return {
            "revoked": {"kind": self.kind, "value": self.value, "until": self.until},
            "dropped_here": self.dropped,
            "propagated": self.propagated,
            "receivers": self.receivers,
            **({"clerk": self.clerk} if self.clerk is not None else {}),
        }


class Revocations:
    """Revocations in this process, and through the cluster when there is one."""

    def __init__(
        self,
        default_ttl: float,
        drop: Callable[[str, str], tuple[list[bytes], float | None]],
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

    def apply(self, kind: str, value: str, until: float, source: str) -> int:
        """Refuse `value` here until `until` and drop its first-level entries."""
        if not self.revoked.add(kind, value, until):
            return 0
        self._metrics.revocations.labels(source, kind).inc()
        dropped = self._forget(kind, value)[0]
        if source != "resync":
            log.info("revoked", extra={"kind": kind, "until": until, "source": source})
        return dropped

    def _forget(self, kind: str, value: str) -> tuple[int, float | None]:
        """Drop the entries of `value` from the first level, and the same keys from the
        shared level: (how many, the latest expiry among them)."""
        keys, expiry = self._drop(kind, value)
        if keys:
            self._metrics.revoked_entries.inc(len(keys))
            if self.cluster is not None:
                self.cluster.level.forget(keys)
        return len(keys), expiry

    async def revoke(self, kind: str, value: str, *, ttl: float | None) -> Outcome:
        """An operator's revocation: here at once, then stored and announced."""
        now = self._now()
        dropped = 0
        if ttl is not None:
            until = now + ttl
        else:
            # Until the token's own expiry when an entry here knows it; a subject (or an
            # id nothing here has seen) for the default time.
            dropped, expiry = self._forget(kind, value)
            if kind == "token_id" and expiry is not None and expiry > now:
                until = expiry
            else:
                until = now + self._default_ttl
        dropped += self.apply(kind, value, until, "admin")
        if self.cluster is None:
            return Outcome(kind, value, until, dropped, propagated=False, receivers=None)
        try:
            heard = await self.cluster.publish(kind, value, until)
        except (RedisError, OSError, TimeoutError) as exc:
            log.error(
                "revocation applied in this process only: the shared level is unreachable",
                extra={"kind": kind, "error": type(exc).__name__},
            )
            why = f"applied in this process only: the shared level is unreachable ({type(exc).__name__})"
            return Outcome(kind, value, until, dropped, False, None, why)
        return Outcome(kind, value, until, dropped, propagated=True, receivers=heard)
