"""The fault runs, short: the proxy, the Clerk emulator and the upstream as processes of
their own, real sockets between them, and Clerk switched down, slow and rate limiting
under steady partner load, then a flood of made-up tokens from many source addresses.

`make faults` runs the same scenario for minutes and prints the figures (latency
included); here only what must hold whatever the machine's speed is asserted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.faults import SHORT, run

FAULT_PHASES = ("down", "slow", "throttle", "flood")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return asyncio.run(run(SHORT))


@pytest.mark.parametrize("phase", ["normal", *FAULT_PHASES, "recover_down", "recover_throttle"])
def test_known_tokens_get_200_whatever_clerk_does(result: dict[str, Any], phase: str) -> None:
    known = result["phases"][phase]["known"]
    assert known["requests"] > 0
    assert known["statuses"] == {200: known["requests"]}


@pytest.mark.parametrize("phase", ["down", "throttle"])
def test_an_outage_or_a_throttle_never_multiplies_our_clerk_calls(
    result: dict[str, Any], phase: str
) -> None:
    assert result["normal_clerk_calls_per_second"] > 0
    assert (
        result["phases"][phase]["clerk_calls_per_second"]
        <= result["normal_clerk_calls_per_second"]
    )


def test_a_flood_stays_within_the_budget(result: dict[str, Any]) -> None:
    flood = result["flood"]
    assert sum(flood["statuses"].values()) == SHORT.flood_requests
    assert flood["statuses"].get("429", 0) > 0  # the budget did refuse the flood
    assert flood["clerk_calls"] <= flood["budget_bound"]


def test_revoked_tokens_are_refused_within_one_ttl(result: dict[str, Any]) -> None:
    delays = result["revocation_seconds"]
    assert len(delays) == SHORT.revoked
    # One TTL, plus the check's own round trip on a busy test machine.
    assert all(d is not None and d <= SHORT.ttl + 0.5 for d in delays)
    for phase, figures in result["phases"].items():
        # Once refused, never let through again (503 while Clerk cannot say: never 200).
        assert 200 not in figures["revoked"], (phase, figures["revoked"])


def test_unknown_tokens_get_a_clear_answer(result: dict[str, Any]) -> None:
    phases = result["phases"]
    assert set(phases["normal"]["strangers"]) == {401}
    assert set(phases["normal"]["newcomers_in_the_end"]) == {200}
    # Clerk down: never a 401 for a token Clerk could not judge, never let through.
    assert set(phases["down"]["newcomers_first_answer"]) == {503}
    assert set(phases["down"]["strangers"]) <= {401, 503}  # 401: still negative-cached
    # Clerk slow: the first answer comes at the deadline; the call fills the cache.
    assert set(phases["slow"]["newcomers_first_answer"]) <= {503}
    assert 200 in phases["slow"]["newcomers_in_the_end"]
