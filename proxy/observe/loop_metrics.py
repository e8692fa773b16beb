"""Counters and histograms for the request path, without locks.

prometheus-client guards every `inc` and `observe` with a mutex, for threaded servers.
The proxy updates metrics only from its event loop thread, so those locks buy nothing,
and on the request path (five updates per request) they cost several microseconds. These
types keep plain floats, and a collector turns them into the same metric families at
scrape time: names, labels, buckets and exposition are prometheus-client's own.

Same calling convention as prometheus-client: `metric.labels(...).inc()`,
`metric.labels(...).observe(x)`, and `observe(x)` on an unlabelled histogram.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client writes it ("0.005", "1.0", "+Inf")."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount: Prometheus buckets are `le`. Scanned from the smallest
        # bound because request latencies land in the first few buckets: compiled, that is
        # a few float compares, against a call into bisect that compares boxed floats.
        # The last bound is +Inf, so the scan always stops (a NaN lands there too).
        bounds = self.bounds
        i = 0
        last = len(bounds) - 1
        while i < last and not amount <= bounds[i]:
            i += 1
        self.counts[i] += 1
        self.sum += amount


C = TypeVar("C", CounterChild, HistogramChild)


class _Labelled(Collector, Generic[C]):
    """Children by label values, made on first use; exported at scrape time."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def labels(self, *values: str, **named: str) -> C:
        if named:
            if values:
                raise ValueError("labels by position or by name, not both")
            values = tuple(named[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def describe(self) -> Iterator[Metric]:
        yield self._family({})

    def collect(self) -> Iterator[Metric]:
        yield self._family(self._children)

    def _new_child(self) -> C:
        raise NotImplementedError

    def _family(self, children: dict[tuple[str, ...], C]) -> Metric:
        raise NotImplementedError


class LoopCounter(_Labelled[CounterChild]):
    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _family(self, children: dict[tuple[str, ...], CounterChild]) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(children.items()):
            family.add_metric(list(key), child.value)
        return family


class LoopHistogram(_Labelled[HistogramChild]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(bounds):
            raise ValueError("buckets must be in increasing order")
        self._bounds = bounds if bounds and bounds[-1] == math.inf else (*bounds, math.inf)
        super().__init__(name, documentation, labelnames, registry)
        self._unlabelled = self.labels() if not self.labelnames else None

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def observe(self, amount: float) -> None:
        if self._unlabelled is None:
            raise ValueError(f"{self.name} has labels: use .labels(...).observe()")
        self._unlabelled.observe(amount)

    def _family(self, children: dict[tuple[str, ...], HistogramChild]) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(children.items()):
            total = 0
            buckets = []
            for bound, count in zip(self._bounds, child.counts, strict=True):
                total += count
                buckets.append((_le(bound), float(total)))
            family.add_metric(list(key), buckets, child.sum)
        return family
