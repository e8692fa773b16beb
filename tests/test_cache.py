"""The verification cache with a fake clock and in-process loaders."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from proxy.auth.cache.entries import Negative, Positive
from proxy.auth.cache.store import VerificationCache, cache_scope
from proxy.auth.gate import Unavailable
from proxy.config.load import Cache
from proxy.core.errors import (
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    VERIFICATION_BUDGET_EXCEEDED,
    VERIFICATION_UNAVAILABLE,
    ProxyError,
)
from proxy.core.principal import Principal
from proxy.observe.metrics import Metrics

T0 = 1_700_000_000.0
# The realm an opaque token's verdict is judged in (`config.realms`); None is a JWT's.
REALM = b"r" * 16


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def machine(expires_at: float | None) -> Principal:
    return Principal(
        type="machine", id="mch_1", token_type="m2m_token", token_id="mt_1", expires_at=expires_at
    )


class Loader:
    """Counts calls; answers with whatever `result` is at call time."""

    def __init__(self, result: Principal | ProxyError, gate: asyncio.Event | None = None) -> None:
        self.result = result
        self.gate = gate
        self.calls = 0

    async def __call__(self) -> Principal:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.result, ProxyError):
            raise self.result
        return self.result


def make(**cfg: Any) -> tuple[VerificationCache, Clock, Metrics]:
    clock, metrics = Clock(), Metrics()
    cache = VerificationCache(
        Cache(**cfg), cache_scope("http://clerk", "sk_test_x"), metrics, now=clock
    )
    return cache, clock, metrics


def count(metrics: Metrics, result: str) -> float:
    return (
        metrics.registry.get_sample_value("authproxy_verify_cache_total", {"result": result}) or 0.0
    )


async def get(
    cache: VerificationCache, load: Callable[[], Awaitable[Principal]], token: str = "mt_tok"
) -> Principal:
    return await cache.get(cache.key(token), load, realm=REALM)


def test_keys_are_hashes_scoped_by_instance() -> None:
    a = VerificationCache(Cache(), cache_scope("http://a", "sk_test_1"), Metrics())
    b = VerificationCache(Cache(), cache_scope("http://b", "sk_test_1"), Metrics())
    c = VerificationCache(Cache(), cache_scope("http://a", "sk_test_2"), Metrics())
    token = "mt_secret_value_123456"
    assert len({a.key(token), b.key(token), c.key(token)}) == 3
    assert len(a.key(token)) == 16  # a 128-bit digest, never the token
    assert token.encode() not in a.key(token)
    assert b"sk_test_1" not in cache_scope("http://a", "sk_test_1")


@pytest.mark.parametrize(
    ("ttl", "expires_in", "fresh_for"),
    [
        (60.0, None, 60.0),  # no expiry of its own: ttl only, never forever
        (60.0, 3600.0, 60.0),
        (60.0, 10.0, 10.0),  # never past the token's expiry
        (60.0, 0.0, 0.0),  # already expired: not cached at all
    ],
)
async def test_positive_lifetime(ttl: float, expires_in: float | None, fresh_for: float) -> None:
    cache, clock, _ = make(ttl_seconds=ttl)
    load = Loader(machine(None if expires_in is None else T0 + expires_in))
    await get(cache, load)
    if fresh_for:
        clock.t = T0 + fresh_for - 0.001
        await get(cache, load)
        assert load.calls == 1
    clock.t = T0 + fresh_for
    await get(cache, load)
    assert load.calls == 2


async def test_a_hit_never_extends_an_entry() -> None:
    cache, clock, metrics = make(ttl_seconds=10)
    load = Loader(machine(None))
    await get(cache, load)
    for step in range(1, 10):
        clock.t = T0 + step
        await get(cache, load)
    assert load.calls == 1
    clock.t = T0 + 10
    await get(cache, load)
    assert load.calls == 2
    assert (count(metrics, "hit"), count(metrics, "miss")) == (9, 2)


@pytest.mark.parametrize("code", [TOKEN_INVALID, TOKEN_EXPIRED])
async def test_rejections_are_cached_for_negative_ttl(code: str) -> None:
    cache, clock, metrics = make(negative_ttl_seconds=5)
    load = Loader(ProxyError(code, "no", token_type="m2m_token"))
    for _ in range(3):
        with pytest.raises(ProxyError) as info:
            await get(cache, load)
        assert info.value.code == code
        assert info.value.token_type == "m2m_token"
    assert load.calls == 1
    assert count(metrics, "negative_hit") == 2
    clock.t = T0 + 5
    with pytest.raises(ProxyError):
        await get(cache, load)
    assert load.calls == 2


async def test_rejections_not_cached_when_asked() -> None:
    cache, _, _ = make()
    load = Loader(ProxyError(TOKEN_INVALID, "bad jwt"))
    for _ in range(3):
        with pytest.raises(ProxyError):
            await cache.get(cache.key("jwt"), load, realm=None)
    assert load.calls == 3


@pytest.mark.parametrize(
    "failure",
    [
        Unavailable("down", 7),
        ProxyError(VERIFICATION_BUDGET_EXCEEDED, "slow down", retry_after=1),
    ],
)
async def test_our_failures_are_never_cached(failure: ProxyError) -> None:
    cache, _, _ = make()
    load = Loader(failure)
    with pytest.raises(ProxyError) as info:
        await get(cache, load)
    assert info.value.code == failure.code
    load.result = machine(None)
    assert (await get(cache, load)).id == "mch_1"
    assert load.calls == 2


async def test_concurrent_misses_share_one_load() -> None:
    cache, _, metrics = make()
    gate = asyncio.Event()
    load = Loader(machine(None), gate)
    tasks = [asyncio.create_task(get(cache, load)) for _ in range(1000)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert load.calls == 1
    assert all(r is results[0] for r in results)
    assert (count(metrics, "miss"), count(metrics, "coalesced")) == (1, 999)


async def test_waiters_of_a_failed_flight_get_the_same_error_and_nothing_is_cached() -> None:
    cache, _, _ = make()
    gate = asyncio.Event()
    load = Loader(Unavailable("down", 3), gate)
    tasks = [asyncio.create_task(get(cache, load)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ProxyError) and r.code == VERIFICATION_UNAVAILABLE for r in results)
    assert {r.retry_after for r in results if isinstance(r, ProxyError)} == {3}
    assert load.calls == 1
    assert len(cache) == 0


async def test_a_cancelled_caller_does_not_cancel_the_flight() -> None:
    cache, _, _ = make()
    gate = asyncio.Event()
    load = Loader(machine(None), gate)
    first = asyncio.create_task(get(cache, load))
    second = asyncio.create_task(get(cache, load))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert (await second).id == "mch_1"
    assert first.cancelled()
    assert load.calls == 1
    assert len(cache) == 1


async def test_the_stale_window_keeps_an_entry_known_until_the_token_expires() -> None:
    cache, clock, _ = make(ttl_seconds=10, stale_if_error_seconds=100)
    key = cache.key("mt_tok")
    await get(cache, Loader(machine(T0 + 30)))
    clock.t = T0 + 20  # past the ttl, inside the stale window and the token's life
    assert cache.fresh(key) is None
    entry = cache.known(key, clock.t)
    assert entry is not None and entry.keep_until == T0 + 30
    clock.t = T0 + 30  # the token's own expiry ends it, stale window or not
    assert cache.known(key, clock.t) is None


async def test_stale_is_off_by_default() -> None:
    cache, clock, _ = make(ttl_seconds=10)
    key = cache.key("mt_tok")
    await get(cache, Loader(machine(None)))
    clock.t = T0 + 10
    assert cache.known(key, clock.t) is None


@pytest.mark.parametrize(
    ("result", "realm", "left"),
    [
        (machine(None), REALM, "fresh"),  # valid: a new entry, fresh from the check
        (ProxyError(TOKEN_INVALID, "revoked"), REALM, "negative"),
        (ProxyError(TOKEN_INVALID, "bad signature"), None, "nothing"),  # a JWT: dropped
        (Unavailable("down"), REALM, "stale"),  # our failure: the entry stays
        (ProxyError(VERIFICATION_BUDGET_EXCEEDED, "later"), REALM, "stale"),
    ],
)
async def test_a_background_check_replaces_drops_or_keeps_the_entry(
    result: Principal | ProxyError, realm: bytes | None, left: str
) -> None:
    cache, clock, _ = make(ttl_seconds=10, stale_if_error_seconds=100)
    key = cache.key("mt_tok")
    await get(cache, Loader(machine(None)))
    clock.t = T0 + 15  # stale
    flight = cache.start(key, Loader(result), realm=realm)
    assert cache.in_flight(key)
    await asyncio.gather(flight, return_exceptions=True)
    assert not cache.in_flight(key)
    entry = cache.known(key, clock.t)
    if left == "fresh":
        assert entry is not None and entry.fresh_until == T0 + 25
    elif left == "stale":
        assert entry is not None and entry.fresh_until == T0 + 10
    else:
        assert entry is None
        negative = left == "negative"
        with pytest.raises(ProxyError) as info:
            await cache.get(key, Loader(Unavailable("down")), realm=REALM)
        assert (info.value.code == TOKEN_INVALID) is negative


async def test_freshness_starts_when_the_check_started_not_when_it_landed() -> None:
    cache, clock, _ = make(ttl_seconds=10)
    key = cache.key("mt_tok")
    gate = asyncio.Event()
    flight = cache.start(key, Loader(machine(None), gate), realm=REALM)
    clock.t = T0 + 4  # Clerk took 4 s
    gate.set()
    await flight
    entry = cache.known(key, clock.t)
    assert entry is not None and entry.fresh_until == T0 + 10
    # An answer slower than the ttl is not cached at all (without a stale window: below).
    other = cache.key("mt_other")
    gate.clear()
    flight = cache.start(other, Loader(machine(None), gate), realm=REALM)
    clock.t = T0 + 15
    gate.set()
    await flight
    assert cache.known(other, clock.t) is None


@pytest.mark.parametrize(
    ("ttl", "ahead", "expires_in", "window"),
    [
        (60.0, 0.2, None, (48.0, 54.0)),  # the last fifth, jittered over its first half
        (60.0, 0.5, 3600.0, (30.0, 45.0)),
        (60.0, 0.0, None, (60.0, 60.0)),  # off: the fresh period's end
        (60.0, 0.2, 30.0, (30.0, 30.0)),  # the fresh period ends at expiry: nothing to gain
    ],
)
def test_refresh_points_fall_in_the_window_and_spread(
    ttl: float, ahead: float, expires_in: float | None, window: tuple[float, float]
) -> None:
    cache, _, _ = make(ttl_seconds=ttl, refresh_ahead=ahead)
    expires = None if expires_in is None else T0 + expires_in
    entry = cache.positive(machine(expires), T0)
    assert entry is not None
    points = [cache.refresh_at(cache.key(f"mt_{i}"), entry) - T0 for i in range(2000)]
    low, high = window
    assert all(low <= p <= high for p in points)
    if high > low:
        # Keys are hashes: the points cover the window evenly (each tenth gets its share).
        tenths = [0] * 10
        for p in points:
            tenths[min(9, int((p - low) / (high - low) * 10))] += 1
        assert min(tenths) > 120


async def test_a_waiter_past_its_deadline_gets_503_and_the_flight_fills_the_cache() -> None:
    cache, _, metrics = make()
    key = cache.key("mt_tok")
    gate = asyncio.Event()
    load = Loader(machine(None), gate)
    with pytest.raises(ProxyError) as info:
        await cache.get(key, load, deadline=0.05, realm=REALM)
    assert (info.value.code, info.value.retry_after) == (VERIFICATION_UNAVAILABLE, 1)
    assert cache.in_flight(key)
    assert metrics.registry.get_sample_value(
        "authproxy_verification_deadline_exceeded_total"
    ) == 1
    # The retry joins the same flight: still one call.
    retry = asyncio.create_task(cache.get(key, load, deadline=5, realm=REALM))
    await asyncio.sleep(0)
    gate.set()
    assert (await retry).id == "mch_1"
    assert load.calls == 1
    assert cache.fresh(key) is not None


async def test_a_waiter_cancelled_within_its_deadline_leaves_the_flight_running() -> None:
    # A client that goes away mid-miss: its wait ends, the load goes on for the others and
    # fills the cache.
    cache, _, _ = make()
    key = cache.key("mt_tok")
    gate = asyncio.Event()
    load = Loader(machine(None), gate)
    gone = asyncio.create_task(cache.get(key, load, deadline=5, realm=REALM))
    stays = asyncio.create_task(cache.get(key, load, deadline=5, realm=REALM))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    flight = cache._flights.get(key)
    assert flight is not None
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert not flight.done()
    gate.set()
    assert (await stays).id == "mch_1"
    assert load.calls == 1
    assert cache.fresh(key) is not None
async def test_max_entries_bounds_memory() -> None:
    cache, _, _ = make(max_entries=100)
    load = Loader(machine(None))
    for i in range(1000):
        await get(cache, load, f"mt_token_{i}")
        assert len(cache) <= 100
    assert len(cache) >= 50


async def test_fresh_answers_only_fresh_positives_and_counts_them() -> None:
    cache, clock, metrics = make(ttl_seconds=60, negative_ttl_seconds=10)
    key = cache.key("mt_tok")
    assert cache.fresh(key) is None  # nothing cached: nothing counted either
    assert count(metrics, "hit") == 0
    p = machine(None)
    await get(cache, Loader(p))
    assert cache.fresh(key) == p
    assert count(metrics, "hit") == 1
    clock.t += 60  # past the TTL: the slow path must reload
    assert cache.fresh(key) is None
    bad = cache.key("mt_bad")
    with pytest.raises(ProxyError):
        await cache.get(bad, Loader(ProxyError(TOKEN_INVALID, "no")), realm=REALM)
    assert cache.fresh(bad) is None  # a negative entry is for the slow path to raise


class FakeSecond:
    """A shared level holding one entry per key, as another process wrote it."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Any] = {}
        self.stored: list[Any] = []
        self.realms: list[bytes] = []

    async def lookup(self, key: bytes, realm: bytes) -> Any:
        self.realms.append(realm)
        return self.entries.get(key, False)

    async def follow(self, key: bytes, realm: bytes, wait: float) -> Any:
        raise AssertionError("nobody else is verifying")

    def store(self, key: bytes, realm: bytes, entry: Any) -> None:
        self.realms.append(realm)
        self.stored.append(entry)
        if entry is not None:
            self.entries[key] = entry


class SlowSecond(FakeSecond):
    """A shared level whose lookups wait for `gate`; `following` makes them say another
    process is verifying (then `follow` gives `answer`)."""

    def __init__(self, gate: asyncio.Event, following: bool = False) -> None:
        super().__init__()
        self.gate = gate
        self.following = following
        self.answer: Any = None
        self.lookups = 0
        self.follows = 0
        self.waits: list[float] = []

    async def lookup(self, key: bytes, realm: bytes) -> Any:
        self.lookups += 1
        await self.gate.wait()
        return self.entries.get(key, self.following)

    async def follow(self, key: bytes, realm: bytes, wait: float) -> Any:
        self.follows += 1
        self.waits.append(wait)
        return self.answer


def slow_rig(
    following: bool = False,
) -> tuple[VerificationCache, SlowSecond, bytes, Loader]:
    """A cache over a `SlowSecond` (its gate closed), the key of one token, and a loader."""
    cache, _, _ = make()
    second = SlowSecond(asyncio.Event(), following)
    cache.second = second
    return cache, second, cache.key("mt_tok"), Loader(machine(None))


async def test_a_miss_answered_by_the_shared_level_loads_nothing_and_is_kept_here() -> None:
    cache, _, _ = make(ttl_seconds=60)
    second = FakeSecond()
    cache.second = second
    key = cache.key("mt_tok")
    second.entries[key] = Positive(principal=machine(None), fresh_until=T0 + 30, keep_until=T0 + 30)
    load = Loader(machine(None))
    assert (await cache.get(key, load, deadline=1, realm=REALM)).id == "mch_1"
    assert load.calls == 0 and second.stored == []
    entry = cache.known(key, T0)
    assert entry is not None and entry.fresh_until == T0 + 30  # its writer's deadline
    assert not cache.in_flight(key)


async def test_concurrent_misses_share_one_shared_lookup_and_one_load() -> None:
    cache, second, key, load = slow_rig()
    first = asyncio.create_task(cache.get(key, load, deadline=5, realm=REALM))
    await asyncio.sleep(0)
    others = [asyncio.create_task(cache.get(key, load, deadline=5, realm=REALM)) for _ in range(3)]
    await asyncio.sleep(0)
    assert cache.in_flight(key)  # the lookup's placeholder holds the key
    second.gate.set()
    assert [p.id for p in await asyncio.gather(first, *others)] == ["mch_1"] * 4
    assert (second.lookups, load.calls) == (1, 1)
    assert len(second.stored) == 1  # written back for the other processes
    assert not cache.in_flight(key)


async def test_a_caller_gone_mid_lookup_still_lets_the_others_through() -> None:
    cache, second, key, load = slow_rig()
    gone = asyncio.create_task(cache.get(key, load, deadline=5, realm=REALM))
    await asyncio.sleep(0)
    stays = asyncio.create_task(cache.get(key, load, deadline=5, realm=REALM))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    second.gate.set()
    assert (await stays).id == "mch_1"
    assert load.calls == 1


async def test_another_process_verifying_is_followed_inside_the_flight() -> None:
    cache, second, key, load = slow_rig(following=True)
    second.gate.set()
    second.answer = Positive(principal=machine(None), fresh_until=T0 + 60, keep_until=T0 + 60)
    assert (await cache.get(key, load, deadline=5, realm=REALM)).id == "mch_1"
    assert (second.follows, load.calls) == (1, 0)
    # No answer in time: this process verifies.
    other = cache.key("mt_other")
    second.answer = None
    assert (await cache.get(other, load, deadline=5, realm=REALM)).id == "mch_1"
    assert (second.follows, load.calls) == (2, 1)
    # Half the deadline at most: the other half is for verifying here (issue 26, row 8).
    assert second.waits == [2.5, 2.5]


async def test_a_jwt_never_asks_the_shared_level_and_a_realm_is_passed_on() -> None:
    cache, _, _ = make()
    second = FakeSecond()
    cache.second = second
    load = Loader(machine(None))
    await cache.get(cache.key("jwt"), load, deadline=5, realm=None)
    assert (second.realms, load.calls) == ([], 1)
    await cache.get(cache.key("mt_tok"), load, deadline=5, realm=REALM)
    assert (second.realms, load.calls) == ([REALM, REALM], 2)  # asked, then written


async def test_a_rejection_in_the_shared_level_reaches_every_waiter() -> None:
    cache, second, key, load = slow_rig()
    second.entries[key] = Negative(code=TOKEN_INVALID, message="no such token", token_type="m2m_token", keep_until=T0 + 10)
    calls = [asyncio.create_task(cache.get(key, load, deadline=5, realm=REALM)) for _ in range(2)]
    await asyncio.sleep(0)
    second.gate.set()
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        assert isinstance(outcome, ProxyError) and outcome.code == TOKEN_INVALID
    assert load.calls == 0


async def test_closing_mid_lookup_refuses_with_503_and_starts_nothing() -> None:
    cache, second, key, load = slow_rig()
    caller = asyncio.create_task(cache.get(key, load, deadline=5, realm=REALM))
    await asyncio.sleep(0)
    await cache.close()
    second.gate.set()
    with pytest.raises(ProxyError) as info:
        await caller
    assert info.value.code == VERIFICATION_UNAVAILABLE
    assert load.calls == 0 and not cache.in_flight(key)


async def test_a_re_check_adopts_a_newer_shared_entry_and_asks_clerk_past_the_same_one() -> None:
    cache, clock, _ = make(ttl_seconds=10)
    second = FakeSecond()
    cache.second = second
    key = cache.key("mt_tok")
    load = Loader(machine(None))
    await cache.get(key, load, realm=REALM)
    assert load.calls == 1 and len(second.stored) == 1  # written for the others
    clock.t = T0 + 9  # due for its re-check; the shared level holds the same entry
    await cache.start(key, load, realm=REALM)
    assert load.calls == 2  # the same entry is no news: Clerk decides
    held = cache.known(key, clock.t)
    assert held is not None and held.fresh_until == T0 + 19
    # Another process re-checked it meanwhile: its newer entry spares our call.
    second.entries[key] = Positive(principal=machine(None), fresh_until=T0 + 25, keep_until=T0 + 25)
    clock.t = T0 + 18
    await cache.start(key, load, realm=REALM)
    assert load.calls == 2
    held = cache.known(key, clock.t)
    assert held is not None and held.fresh_until == T0 + 25


async def test_an_answer_later_than_the_ttl_is_a_stale_entry_not_a_lost_one() -> None:
    """A slow Clerk: the re-check of a known token lands after the TTL. Its verdict is
    kept as a stale entry (served while the next check runs), not dropped for a miss."""
    cache, clock, _ = make(ttl_seconds=10, stale_if_error_seconds=100)
    key = cache.key("mt_tok")
    await get(cache, Loader(machine(None)))
    clock.t = T0 + 12  # stale; its re-check starts now and takes 13 s
    gate = asyncio.Event()
    flight = cache.start(key, Loader(machine(None), gate), realm=REALM)
    clock.t = T0 + 25
    gate.set()
    await flight
    entry = cache.known(key, clock.t)
    assert entry is not None and (entry.fresh_until, entry.keep_until) == (T0 + 22, T0 + 122)
