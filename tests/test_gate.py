"""The breaker (Clerk's and each issuer's gate, Redis's) as a state machine: fed times and
outcomes, asked whether a call may go."""

from __future__ import annotations

import pytest

from proxy.auth.breaker import Breaker, no_jitter
from proxy.auth.gate import CallGate, retry_after, retry_after_seconds
from proxy.core.errors import VERIFICATION_UNAVAILABLE, ProxyError


def held(seconds: float, reason: str) -> ProxyError:
    return ProxyError(VERIFICATION_UNAVAILABLE, f"held:{reason}")


def gate(rng: float = 1.0, now: list[float] | None = None) -> CallGate:
    # rng 1.0: the top of every jitter range, so pauses are exact here.
    clock = now or [0.0]
    return CallGate(
        0.1,
        10.0,
        clock=lambda: clock[0],
        refuse=held,
        credentials_pause=30.0,
        rng=lambda: rng,
    )


def test_open_until_something_fails() -> None:
    g = gate()
    assert g.held(0.0) is None
    assert g.enter(0.0) is None
    g.succeeded()
    assert g.held(1.0) is None and g.failures == 0


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    g = gate()
    now, pauses = 0.0, []
    for _ in range(10):
        pauses.append(g.failed(now))
        now += pauses[-1]  # each failure comes when the last pause is over (the probe's)
    assert pauses == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0])


def test_calls_that_fail_together_count_once() -> None:
    g = gate()
    assert [g.failed(0.0) for _ in range(20)] == pytest.approx([0.1] * 20)
    assert g.failures == 1


@pytest.mark.parametrize(("rng", "pause"), [(0.0, 0.4), (0.5, 0.6), (1.0, 0.8)])
def test_equal_jitter_keeps_half_of_each_step(rng: float, pause: float) -> None:
    g = gate(rng)
    now = 0.0
    for _ in range(3):
        now += g.failed(now)
    assert g.failed(now) == pytest.approx(pause)  # the 4th step, 0.8 s, jittered in [0.4, 0.8]


def test_while_closed_every_call_is_held_with_the_time_left() -> None:
    g = gate()
    g.failed(0.0)
    assert g.held(0.05) == (pytest.approx(0.05), "backoff")
    assert g.enter(0.05) == (pytest.approx(0.05), "backoff")


def test_after_the_pause_one_probe_goes_and_everyone_else_waits_for_it() -> None:
    g = gate()
    g.failed(0.0)
    assert g.enter(0.2) is None  # the probe
    assert g.enter(0.2) == (0.1, "probe")
    assert g.enter(0.3) == (0.1, "probe")
    g.succeeded()
    assert g.enter(0.3) is None and g.enter(0.3) is None


def test_a_failed_probe_closes_for_the_next_step() -> None:
    g = gate()
    g.failed(0.0)
    assert g.enter(0.2) is None
    assert g.failed(0.2) == pytest.approx(0.2)
    assert g.held(0.3) == (pytest.approx(0.1), "backoff")
    assert g.enter(0.41) is None


def test_an_abandoned_probe_lets_another_call_probe() -> None:
    g = gate()
    g.failed(0.0)
    assert g.enter(0.2) is None
    g.abandoned()
    assert g.enter(0.2) is None


def test_retry_after_is_a_floor_never_shortened_by_jitter() -> None:
    for rng in (0.0, 0.5, 1.0):
        g = gate(rng)
        pause = g.throttled(0.0, 4.0)
        assert 4.0 <= pause <= 4.4
        assert g.held(3.99) is not None and g.held(3.99)[1] == "retry_after"  # type: ignore[index]
        assert g.enter(pause) is None  # then the probe


def test_a_429_without_retry_after_backs_off() -> None:
    g = gate()
    assert g.throttled(0.0, None) == pytest.approx(0.1)
    assert g.held(0.0) == (pytest.approx(0.1), "backoff")


def test_a_5xx_retry_after_is_honoured_too() -> None:
    g = gate()
    assert g.failed(0.0, 30.0) >= 30.0


def test_a_later_short_failure_never_shortens_a_longer_pause() -> None:
    g = gate()
    g.throttled(0.0, 20.0)
    g.failed(1.0)  # a call that was already out when the 429 came back
    held = g.held(1.0)
    assert held is not None and held[0] >= 19.0 and held[1] == "retry_after"


def test_a_refusal_of_our_credentials_pauses_for_its_time_then_one_probe() -> None:
    g = gate()
    assert g.refused(0.0, 30.0) == pytest.approx(30.0)
    assert g.held(29.9) == (pytest.approx(0.1), "refused")
    assert g.enter(30.0) is None  # the probe
    assert g.held(30.0) == (0.1, "probe")


@pytest.mark.parametrize(
    ("status", "failures", "held"),
    [(200, 0, None), (404, 0, None), (401, 0, None), (503, 1, "backoff"), (429, 1, "retry_after")],
)
def test_settle_reads_an_answer(status: int, failures: int, held: str | None) -> None:
    g = gate()
    g.settle(0.0, status, 5.0 if status == 429 else None)
    assert g.failures == failures
    found = g.held(0.0)
    assert (found[1] if found else None) == held


async def test_through_holds_fails_settles_and_refuses() -> None:
    now, calls = [0.0], []
    g = gate(now=now)

    async def answer(status: int) -> tuple[int, dict[str, str], bytes]:
        calls.append(status)
        return status, {}, b""

    async def unreachable() -> tuple[int, dict[str, str], bytes]:
        calls.append(0)
        raise ProxyError(VERIFICATION_UNAVAILABLE, "down")

    assert g.refusal() is None
    assert (await g.through(lambda: answer(200)))[0] == 200
    with pytest.raises(ProxyError, match="down"):
        await g.through(unreachable)
    with pytest.raises(ProxyError, match="held:backoff"):
        await g.through(lambda: answer(200))
    assert str(g.refusal()) == "verification_unavailable: held:backoff"
    now[0] = 1.0  # past the pause: the probe answers 401 (our credentials)
    assert (await g.through(lambda: answer(401)))[0] == 401
    now[0] = 20.0
    with pytest.raises(ProxyError, match="held:refused"):
        await g.through(lambda: answer(200))
    assert calls == [200, 0, 401]


def test_redis_opens_after_failures_in_a_row_for_a_fixed_pause_and_one_probe_decides() -> None:
    b = Breaker(5.0, threshold=3, rng=no_jitter)  # cache.shared: breaker_failures, _seconds
    for _ in range(2):
        assert b.enter(100.0) is None
        assert b.failed(100.0) == 0.0
    assert b.enter(100.0) is None
    b.succeeded()  # a success resets the count
    for _ in range(3):
        assert b.state(100.0) == "closed" and b.enter(100.0) is None
        b.failed(100.0)
    assert b.state(100.0) == "open" and b.enter(104.9) is not None
    assert b.state(105.0) == "half_open"
    assert b.enter(105.0) is None  # the probe
    assert b.enter(105.0) == (5.0, "probe")  # only one at a time
    assert b.failed(105.0) == 5.0  # the probe failed: open again for the full time, no longer
    assert b.state(105.0) == "open" and b.enter(109.9) is not None
    assert b.enter(110.0) is None
    b.succeeded()
    assert b.state(110.0) == "closed" and b.enter(110.0) is None


def test_a_refusal_opens_at_once_whatever_the_threshold() -> None:
    b = Breaker(5.0, threshold=3, rng=no_jitter)
    assert b.refused(0.0, 30.0) == 30.0 and b.state(0.0) == "open"
    assert b.enter(30.0) is None and b.state(30.0) == "half_open"  # the probe


@pytest.mark.parametrize(
    ("value", "passed_on", "for_the_gate"),
    [
        (None, 2, None),
        ("7", 7, 7.0),
        (" 7 ", 7, 7.0),
        ("0", 1, 0.0),
        ("99999", 3600, 3600.0),
        ("1.5", 2, None),
        ("-3", 2, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 2, None),
    ],
)
def test_retry_after_is_read_one_way(
    value: str | None, passed_on: int, for_the_gate: float | None
) -> None:
    """Delta-seconds only, capped at an hour; what we pass on is at least 1 s, else 2 s."""
    headers = {} if value is None else {"Retry-After": value}
    assert retry_after(headers) == passed_on
    assert retry_after_seconds(headers) == for_the_gate
