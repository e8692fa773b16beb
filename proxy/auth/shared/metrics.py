"""The shared level's metrics, `authproxy_shared_cache_*` and the revocation counters.

Registered once per registry (a config reload that rebuilds the verifier finds them
there); off the first-level hit path, so prometheus-client's own types are fine.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class SharedMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.lookups = Counter(
            "authproxy_shared_cache_lookups_total",
            "Shared-level lookups after a first-level miss: hit, negative_hit, miss, garbled "
            "(a value that failed its MAC or format: refused and verified again), error.",
            ["result"],
            registry=r,
        )
        self.errors = Counter(
            "authproxy_shared_cache_errors_total",
            "Shared-level calls that failed, by operation and kind (timeout, connection, "
            "breaker_open: skipped while the breaker is open).",
            ["op", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "authproxy_shared_cache_latency_seconds",
            "Shared-level call latency by operation (successful calls).",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker_open = Gauge(
            "authproxy_shared_cache_breaker_open",
            "1 while the breaker keeps calls away from Redis (open or probing), else 0.",
            registry=r,
        )
        self.flights = Counter(
            "authproxy_shared_cache_flights_total",
            "Cluster single-flight: led (this process verified), followed (another process's "
            "answer was used), waited_out (no answer within flight_wait: verified here).",
            ["result"],
            registry=r,
        )
        self.budget = Counter(
            "authproxy_shared_budget_total",
            "Billable verifications judged by the cluster budget in Redis: allowed, refused, "
            "fallback (Redis away: the per-pod budget decided).",
            ["result"],
            registry=r,
        )
        self.subscribed = Gauge(
            "authproxy_shared_cache_subscribed",
            "1 while this process listens to the cluster's revocation channel.",
            registry=r,
        )
        self.revocations = Counter(
            "authproxy_revocations_total",
            "Revocations applied in this process, by source (admin, message, resync) and "
            "kind (token_id, subject).",
            ["source", "kind"],
            registry=r,
        )
        self.revoked_entries = Counter(
            "authproxy_revoked_entries_total",
            "First-level entries dropped because their token id or subject was revoked.",
            registry=r,
        )
        self.revocations_refused = Counter(
            "authproxy_revocations_refused_total",
            "Revocations read from the shared level (messages and set members) that do not "
            "carry this instance's MAC, or end at no time an operator could set: ignored; "
            "by source (message, resync).",
            ["source"],
            registry=r,
        )
        self.revoked_refusals = Counter(
            "authproxy_revoked_refusals_total",
            "Verifications refused because the token id or subject is revoked here.",
            registry=r,
        )

    def watch_breaker(self, is_open: Callable[[], bool]) -> None:
        self.breaker_open.set_function(lambda: 1.0 if is_open() else 0.0)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, SharedMetrics] = (
    weakref.WeakKeyDictionary()
)


def shared_metrics(registry: CollectorRegistry) -> SharedMetrics:
    found = _BY_REGISTRY.get(registry)
    if found is None:
        found = _BY_REGISTRY[registry] = SharedMetrics(registry)
    return found
