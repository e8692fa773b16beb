"""The two-generation expiring map: pure, fed a clock by hand."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from proxy.auth.cache.generations import Generations


@dataclass(frozen=True)
class E:
    name: str
    keep_until: float


def test_round_trip_and_missing() -> None:
    g: Generations[str, E] = Generations(10, 60, now=0)
    assert g.get("a", 0) is None
    g.set("a", E("a", 60), 0)
    assert g.get("a", 59.9) == E("a", 60)
    assert len(g) == 1


@pytest.mark.parametrize("age", [0.0, 30.0, 59.999])
def test_live_entries_are_returned_from_either_generation(age: float) -> None:
    g: Generations[str, E] = Generations(4, 60, now=0)
    g.set("a", E("a", 60), 0)
    g.set("b", E("b", 60), 0)  # young is full (half of 4)
    g.set("c", E("c", 60), 0)  # rotates: a, b are old now
    assert [g.get(k, age) for k in "abc"] == [E(k, 60) for k in "abc"]


@pytest.mark.parametrize("generation", ["young", "old"])
def test_an_entry_is_never_returned_at_or_after_keep_until(generation: str) -> None:
    g: Generations[str, E] = Generations(4, 60, now=0)
    g.set("a", E("a", 10), 0)
    if generation == "old":
        g.set("b", E("b", 60), 0)
        g.set("c", E("c", 60), 0)
    assert g.get("a", 10) is None
    assert g.get("a", 5) is None  # and it is gone, not just hidden


def test_setting_an_expired_entry_removes_the_old_one() -> None:
    g: Generations[str, E] = Generations(4, 60, now=0)
    g.set("a", E("a", 60), 0)
    g.set("a", E("a", 5), 10)
    assert g.get("a", 10) is None
    assert len(g) == 0


@pytest.mark.parametrize("max_entries", [1, 2, 3, 10, 101])
def test_never_holds_more_than_max_entries(max_entries: int) -> None:
    g: Generations[int, E] = Generations(max_entries, 60, now=0)
    for i in range(10 * max_entries + 7):
        g.set(i, E(str(i), 60), 0)
        assert len(g) <= max_entries
        assert g.get(i, 0) == E(str(i), 60)  # the newest entry is always kept


def test_an_entry_in_use_survives_a_flood_of_one_off_keys() -> None:
    g: Generations[str, E] = Generations(100, 3600, now=0)
    g.set("partner", E("partner", 3600), 0)
    for i in range(10_000):
        g.set(f"flood{i}", E("x", 3600), 0)
        if i % 40 == 0:  # used more often than half the cache turns over
            assert g.get("partner", 0) is not None
    assert g.get("partner", 0) == E("partner", 3600)
    assert g.get("flood0", 0) is None  # the one-off keys were evicted instead


def test_time_drops_whole_generations_once_nothing_in_them_can_be_live() -> None:
    g: Generations[str, E] = Generations(1000, 60, now=0)
    g.set("a", E("a", 60), 0)
    g.set("b", E("b", 100), 50)
    assert g.get("b", 61) == E("b", 100)  # the rotation at 61 keeps everything live
    g.set("c", E("c", 180), 121)  # the rotation at 121 drops the dict "a" was in
    assert len(g) == 2  # b (promoted by the read) and c
    assert g.get("x", 1000) is None  # idle for many horizons: everything dropped
    assert len(g) == 0


@pytest.mark.parametrize(("max_entries", "horizon"), [(0, 60), (10, 0), (10, -1)])
def test_rejects_nonsense_bounds(max_entries: int, horizon: float) -> None:
    with pytest.raises(ValueError):
        Generations(max_entries, horizon, now=0)
