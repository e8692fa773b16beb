"""The cost guard: token buckets bounding billable Clerk calls (cache misses only).

A global bucket caps the instance-wide rate (Clerk rate-limits per instance and bills
per call); a per-client-IP bucket stops one client from spending the global budget.
Per-IP buckets live in a bounded TTL cache, so a flood of source addresses costs at
most `max_clients` small objects; an evicted bucket comes back full, which is also what
it would have refilled to, and the global bucket still bounds the total.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from proxy.config import model as config
from proxy.core.errors import VERIFICATION_BUDGET_EXCEEDED, ProxyError
from proxy.observe.metrics import Metrics

DEFAULT_MAX_CLIENTS = 50_000


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, bucket: config.Bucket, now: float) -> TokenBucket:
        return cls(
            rate=bucket.rate, burst=float(bucket.burst), tokens=float(bucket.burst), updated=now
        )

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def wait(self, now: float) -> float:
        """Seconds until one token is available (0 when one is available now)."""
        self.refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self.refill(now)
        self.tokens -= 1.0


class VerificationBudget:
    def __init__(
        self,
        cfg: config.VerificationBudget,
        metrics: Metrics | None = None,
        *,
        now: Callable[[], float] = time.monotonic,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._now = now
        self._global = TokenBucket.full(cfg.global_, now())
        # After burst/rate seconds untouched a bucket is full again: forgetting it is exact.
        ttl = cfg.per_ip.burst / cfg.per_ip.rate
        self._clients: TTLCache[str, TokenBucket] = TTLCache(max_clients, ttl, timer=now)

    def acquire(self, client_ip: str) -> None:
        """Spend one verification, or raise 429 `verification_budget_exceeded`."""
        if not self._cfg.enabled:
            return
        now = self._now()
        client = self._clients.get(client_ip)
        if client is None:
            client = TokenBucket.full(self._cfg.per_ip, now)
        # Check both before taking from either, so a refusal spends nothing.
        for scope, bucket in (("per_ip", client), ("global", self._global)):
            wait = bucket.wait(now)
            if wait > 0:
                if self._metrics is not None:
                    self._metrics.budget_rejections.labels(scope).inc()
                raise ProxyError(
                    VERIFICATION_BUDGET_EXCEEDED,
                    "too many tokens to verify that are not cached yet; retry later",
                    retry_after=max(1, math.ceil(wait)),
                )
        client.take(now)
        self._global.take(now)
        # Re-insert so the TTL restarts from the last use.
        self._clients[client_ip] = client
