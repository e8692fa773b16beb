"""The Clerk gate as a state machine: fed times and outcomes, asked whether a call may go."""

from __future__ import annotations

import pytest

from proxy.auth.gate import CallGate


def gate(rng: float = 1.0) -> CallGate:
    # rng 1.0: the top of every jitter range, so pauses are exact here.
    return CallGate(0.1, 10.0, rng=lambda: rng)


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
