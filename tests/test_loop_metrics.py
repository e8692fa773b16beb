"""The lock-free request-path metrics expose exactly what prometheus-client would."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

import proxy.observe.metrics  # noqa: F401 - disables *_created series, as in production
from proxy.observe.loop_metrics import LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
OBSERVATIONS = [0.0, 0.0005, 0.001, 0.00100001, 0.01, 0.05, 0.1, 0.99, 1.0, 1.5, 100.0]


def both_registries() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)


@pytest.mark.parametrize(
    "incs",
    [
        [],
        [(("a", "GET", "200"), 1.0)],
        [(("a", "GET", "200"), 1.0), (("a", "GET", "200"), 2.5), (("b", "POST", "401"), 1.0)],
    ],
)
def test_counter_exposition_is_prometheus_clients(incs: list[tuple[tuple[str, ...], float]]) -> None:
    ours_r, theirs_r = both_registries()
    ours = LoopCounter("x_requests_total", "Requests.", ["route", "method", "code"], ours_r)
    theirs = Counter("x_requests_total", "Requests.", ["route", "method", "code"], registry=theirs_r)
    for labels, amount in incs:
        ours.labels(*labels).inc(amount)
        theirs.labels(*labels).inc(amount)
    assert generate_latest(ours_r) == generate_latest(theirs_r)


@pytest.mark.parametrize("labelled", [True, False])
def test_histogram_exposition_is_prometheus_clients(labelled: bool) -> None:
    ours_r, theirs_r = both_registries()
    names = ["route"] if labelled else []
    ours = LoopHistogram("x_seconds", "Time.", names, ours_r, buckets=BUCKETS)
    theirs = Histogram("x_seconds", "Time.", names, buckets=BUCKETS, registry=theirs_r)
    for i, value in enumerate(OBSERVATIONS):
        if labelled:
            route = "a" if i % 3 else "b"
            ours.labels(route).observe(value)
            theirs.labels(route).observe(value)
        else:
            ours.observe(value)
            theirs.observe(value)
    assert generate_latest(ours_r) == generate_latest(theirs_r)


def test_labels_by_name_and_sample_values() -> None:
    registry = CollectorRegistry(auto_describe=True)
    counter = LoopCounter("x_total", "X.", ["token_type", "result"], registry)
    counter.labels(token_type="m2m_token", result="allowed").inc()
    counter.labels("m2m_token", "allowed").inc()
    assert registry.get_sample_value(
        "x_total", {"token_type": "m2m_token", "result": "allowed"}
    ) == 2.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.labels("only-one"), "takes labels"),
        (lambda c: c.labels("a", result="b"), "not both"),
        (lambda c: c.labels("a", "b").inc(-1), "only go up"),
    ],
)
def test_misuse_is_refused(call: object, message: str) -> None:
    counter = LoopCounter("x_total", "X.", ["token_type", "result"], CollectorRegistry())
    with pytest.raises(ValueError, match=message):
        call(counter)  # type: ignore[operator]


def test_a_labelled_histogram_needs_labels_and_names_are_registered_once() -> None:
    registry = CollectorRegistry(auto_describe=True)
    histogram = LoopHistogram("x_seconds", "Time.", ["route"], registry, buckets=BUCKETS)
    with pytest.raises(ValueError, match="has labels"):
        histogram.observe(1.0)
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("x_seconds", "Time.", buckets=BUCKETS, registry=registry)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.floats(allow_nan=False, min_value=-1.0, max_value=1e6)
        | st.sampled_from([*BUCKETS, *(math.nextafter(b, 0.0) for b in BUCKETS), math.inf]),
        max_size=40,
    )
)
def test_histogram_buckets_agree_with_prometheus_client_for_any_values(values: list[float]) -> None:
    # The bucket scan (first bound >= value, +Inf last) against prometheus-client's own.
    ours_r, theirs_r = both_registries()
    ours = LoopHistogram("x_seconds", "Time.", [], ours_r, buckets=BUCKETS)
    theirs = Histogram("x_seconds", "Time.", buckets=BUCKETS, registry=theirs_r)
    for value in values:
        ours.observe(value)
        theirs.observe(value)
    assert generate_latest(ours_r) == generate_latest(theirs_r)
