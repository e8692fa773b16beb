"""The cost guard: token buckets bounding billable Clerk calls, charged to who pays.

Two payers:
- A token the cache does not know (a miss) is charged to its **source** first — the
  client address masked to `per_ip.ipv4_prefix` / `ipv6_prefix`, so one host with a
  whole IPv6 /64 is one source — and then to the global bucket, but only while more
  than the **reserve** is left in it. A flood of unknown tokens can empty the global
  bucket down to the reserve, never further.
- Re-verifying a token the cache knows as valid (refresh ahead, the stale window) is
  charged to the global bucket alone and may use the reserve. It is never refused with
  a 429: the caller is answered from the entry, and a refresh that finds the bucket
  empty is deferred (`known_wait`).

So under a flood the global bucket sits at the reserve; known tokens take from it and
have first call on the refill. The global bucket still bounds every call to Clerk
(Clerk rate-limits per instance and bills per call).

Source buckets live in a bounded TTL cache, so a flood of source addresses costs at
most `max_clients` small objects; an evicted bucket comes back full, which is also what
it would have refilled to, and the global bucket still bounds the total.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from proxy.config import model as config
from proxy.core.errors import VERIFICATION_BUDGET_EXCEEDED, ProxyError
from proxy.observe.metrics import Metrics

DEFAULT_MAX_CLIENTS = 50_000


def exceeded(wait: float) -> ProxyError:
    """The 429 of a spent budget, this pod's or the cluster's, `wait` seconds from a token."""
    return ProxyError(
        VERIFICATION_BUDGET_EXCEEDED,
        "too many tokens to verify that are not cached yet; retry later",
        retry_after=max(1, math.ceil(wait)),
    )


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

    def wait(self, now: float, floor: float = 0.0) -> float:
        """Seconds until one token above `floor` is available (0 when one is now)."""
        self.refill(now)
        need = 1.0 + floor
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self.refill(now)
        self.tokens -= 1.0


def source_of(client_ip: str, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """The budget's payer for an address: its network at the configured prefix. An
    IPv4-mapped IPv6 address is its IPv4 address; a string that is no address is its own
    source."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        if ipv4_prefix >= 32:
            return str(address)
        return str(ipaddress.IPv4Network((address, ipv4_prefix), strict=False))
    if ipv6_prefix >= 128:
        return str(address)
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))


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
        # Never the whole bucket: one call must stay possible for unknown tokens.
        self._reserve = min(cfg.reserved_for_known * cfg.global_.burst, cfg.global_.burst - 1.0)
        # After burst/rate seconds untouched a bucket is full again: forgetting it is exact.
        ttl = cfg.per_ip.burst / cfg.per_ip.rate
        self._clients: TTLCache[str, TokenBucket] = TTLCache(max_clients, ttl, timer=now)

    def source(self, client_ip: str) -> str:
        """Who pays for `client_ip`'s unknown tokens (its network at the configured prefix)."""
        return source_of(client_ip, self._cfg.ipv4_prefix, self._cfg.ipv6_prefix)

    def acquire(self, client_ip: str) -> None:
        """Spend one verification of an unknown token for `client_ip`'s source, or raise
        429 `verification_budget_exceeded`. (A source string is its own source.)"""
        if not self._cfg.enabled:
            return
        now = self._now()
        source = self.source(client_ip)
        client = self._clients.get(source)
        if client is None:
            client = TokenBucket.full(self._cfg.per_ip, now)
        # Check both before taking from either, so a refusal spends nothing.
        for scope, bucket, floor in (
            ("per_ip", client, 0.0),
            ("global", self._global, self._reserve),
        ):
            wait = bucket.wait(now, floor)
            if wait > 0:
                self._count(scope)
                raise exceeded(wait)
        client.take(now)
        self._global.take(now)
        # Re-insert so the TTL restarts from the last use.
        self._clients[source] = client

    def known_wait(self) -> float:
        """Spend one re-verification of a known-valid token (0 returned), or say how many
        seconds until one is available (nothing spent): the caller defers, never refuses."""
        if not self._cfg.enabled:
            return 0.0
        now = self._now()
        wait = self._global.wait(now)
        if wait > 0:
            self._count("known")
            return wait
        self._global.take(now)
        return 0.0

    def _count(self, scope: str) -> None:
        if self._metrics is not None:
            self._metrics.budget_rejections.labels(scope).inc()
