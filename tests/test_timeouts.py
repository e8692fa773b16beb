"""The connection timeout policy, pure: phases and times in, a verdict out."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from proxy.config.load import build_config
from proxy.config.values import ConfigError
from proxy.core.timeouts import (
    BODY_RATE,
    DRAIN_IDLE,
    HEAD_TIMEOUT,
    IDLE_TIMEOUT,
    WEBSOCKET_IDLE,
    ConnectionClock,
    ConnectionPolicy,
    clock_of,
)
from tests.support import config_dict

POLICY = ConnectionPolicy(
    idle_timeout=75, head_timeout=30, body_grace=20, min_body_rate=500, websocket_idle_timeout=600
)

Step = Callable[[ConnectionClock], None]


def received(t: float) -> Step:
    return lambda c: c.received(t)


def head_done(t: float) -> Step:
    return lambda c: c.head_done(t)


def wait(t: float) -> Step:
    return lambda c: c.body_wait(t)


def chunk(size: int, t: float) -> Step:
    return lambda c: c.body_chunk(size, t)


def answered(t: float) -> Step:
    return lambda c: c.answered(t)


def upgraded(t: float) -> Step:
    return lambda c: c.upgraded(t)


def frame(t: float) -> Step:
    return lambda c: c.frame(t)


@pytest.mark.parametrize(
    ("steps", "now", "verdict"),
    [
        # Connected and silent: the idle timeout, from the accept.
        ([], 75.0, None),
        ([], 75.1, IDLE_TIMEOUT),
        # A head's first byte starts the head clock; more bytes do not restart it.
        ([received(10)], 40.0, None),
        ([received(10), received(39)], 40.1, HEAD_TIMEOUT),
        # A whole head: the upstream's business, never ours however long.
        ([received(10), head_done(11)], 10_000, None),
        # Answered: idle again, from the answer.
        ([received(10), head_done(11), answered(100)], 175.0, None),
        ([received(10), head_done(11), answered(100)], 175.1, IDLE_TIMEOUT),
        # A body that never comes: the grace.
        ([head_done(0), wait(0)], 20.0, None),
        ([head_done(0), wait(0)], 20.1, BODY_RATE),
        # 1 byte a second (slowloris) buys 2 ms a second: out just after the grace.
        (
            [
                head_done(0),
                wait(0),
                *[s(t) for t in range(1, 20) for s in (lambda t: chunk(1, t), wait)],
            ],
            20.1,
            BODY_RATE,
        ),
        # At the minimum rate the budget stays full: 500 B/s forever is fine.
        (
            [
                head_done(0),
                wait(0),
                *[s(t) for t in range(1, 100) for s in (lambda t: chunk(500, t), wait)],
            ],
            118.0,
            None,
        ),
        # A fast start buys no long stall: the budget is capped at the grace.
        ([head_done(0), wait(0), chunk(10_000_000, 1), wait(1)], 21.1, BODY_RATE),
        # Time spent pushing a chunk upstream (after body_chunk, before body_wait) is not
        # the client's.
        ([head_done(0), wait(0), chunk(100, 1), wait(500)], 519.0, None),
        # The body is done: busy, untimed.
        ([head_done(0), wait(0), chunk(0, 1)], 10_000, None),
        # WebSocket: idle from the last frame either way.
        ([head_done(0), upgraded(1)], 601.0, None),
        ([head_done(0), upgraded(1)], 601.1, WEBSOCKET_IDLE),
        ([head_done(0), upgraded(1), frame(500)], 1000.0, None),
        ([head_done(0), upgraded(1), received(500)], 1100.1, WEBSOCKET_IDLE),
    ],
)
def test_verdicts(steps: list[Step], now: float, verdict: str | None) -> None:
    clock = ConnectionClock(POLICY, 0.0)
    for step in steps:
        step(clock)
    assert clock.expired(now) == verdict


@pytest.mark.parametrize(
    ("steps", "verdict"),
    [
        ([], DRAIN_IDLE),
        ([answered(5)], DRAIN_IDLE),
        ([received(5)], None),  # a head on its way is still served (with Connection: close)
        ([head_done(5)], None),
        ([head_done(5), wait(5)], None),
        ([head_done(5), upgraded(5)], None),  # sockets get the grace, then 1001
    ],
)
def test_draining_closes_only_idle_connections(steps: list[Step], verdict: str | None) -> None:
    clock = ConnectionClock(POLICY, 0.0)
    for step in steps:
        step(clock)
    assert clock.expired(6.0, draining=True) == verdict


def test_zero_turns_a_timeout_off() -> None:
    off = ConnectionPolicy(
        idle_timeout=0, head_timeout=0, body_grace=0, min_body_rate=0, websocket_idle_timeout=0
    )
    for steps in ([], [received(1)], [head_done(1), wait(1)], [head_done(1), upgraded(1)]):
        clock = ConnectionClock(off, 0.0)
        for step in steps:
            step(clock)
        assert clock.expired(1e9) is None
    rate_off = ConnectionClock(ConnectionPolicy(min_body_rate=0), 0.0)
    rate_off.head_done(0)
    rate_off.body_wait(0)
    assert rate_off.expired(1e6) is None


def test_busy_is_never_timed() -> None:
    clock = ConnectionClock(POLICY, 0.0)
    clock.received(1)
    clock.busy()
    assert clock.expired(1e9) is None
    assert not clock.answerable()


def test_a_closed_connection_is_judged_once() -> None:
    clock = ConnectionClock(POLICY, 0.0)
    assert clock.expired(100) == IDLE_TIMEOUT
    clock.closed()
    assert clock.expired(1e9) is None
    assert clock.expired(1e9, draining=True) is None


def test_only_heads_and_bodies_can_still_be_answered_408() -> None:
    clock = ConnectionClock(POLICY, 0.0)
    assert not clock.answerable()
    clock.received(1)
    assert clock.answerable()
    clock.head_done(2)
    assert not clock.answerable()
    clock.body_wait(2)
    assert clock.answerable()
    clock.upgraded(3)
    assert not clock.answerable()


@pytest.mark.parametrize(
    ("policy", "tick"),
    [
        (ConnectionPolicy(), 1.0),
        (ConnectionPolicy(idle_timeout=2, head_timeout=1, body_grace=1), 0.25),
        (
            ConnectionPolicy(
                idle_timeout=0.1, head_timeout=0, body_grace=0, websocket_idle_timeout=0
            ),
            0.05,
        ),
    ],
)
def test_the_sweep_tick_is_a_quarter_of_the_shortest_timeout(
    policy: ConnectionPolicy, tick: float
) -> None:
    assert policy.tick() == tick


def test_clock_of_finds_the_clock_on_the_transports_protocol() -> None:
    clock = ConnectionClock(POLICY, 0.0)

    class Proto:
        def __init__(self, clock: object) -> None:
            self.clock = clock

    class Transport:
        def __init__(self, proto: object) -> None:
            self._proto = proto

        def get_protocol(self) -> object:
            return self._proto

    assert clock_of(Transport(Proto(clock))) is clock
    assert clock_of(Transport(Proto("not a clock"))) is None
    assert clock_of(Transport(object())) is None
    assert clock_of(None) is None


def test_config_section_parses_and_names_bad_keys() -> None:
    cfg = build_config(
        config_dict(
            connections={
                "idle_timeout": "2m",
                "head_timeout": "10s",
                "body_grace": 5,
                "min_body_rate": "1KiB",
                "websocket_idle_timeout": 0,
                "max_per_address": 100,
            }
        ),
        file="t.yaml",
    )
    assert cfg.connections == ConnectionPolicy(120.0, 10.0, 5.0, 1024, 0.0, 100)
    assert (
        build_config(config_dict(), file="t.yaml").connections == ConnectionPolicy()
    )
    with pytest.raises(ConfigError) as caught:
        build_config(
            config_dict(
                connections={"idle_timeout": "soon", "max_per_address": -1, "head_timout": 1}
            ),
            file="t.yaml",
        )
    problems = " | ".join(str(i) for i in caught.value.issues)
    assert "connections.idle_timeout" in problems
    assert "connections.max_per_address" in problems
    assert "head_timout" in problems
