"""Token buckets with a fake clock: how many verifications pass, and when again."""

from __future__ import annotations

import pytest

from proxy.auth.budget import TokenBucket, VerificationBudget, source_of
from proxy.config.load import Bucket
from proxy.config.load import VerificationBudget as BudgetConfig
from proxy.core.errors import VERIFICATION_BUDGET_EXCEEDED, ProxyError
from proxy.observe.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


ROOMY = Bucket(100.0, 1000)
SMALL = Bucket(1.0, 5)


def budget(
    global_: Bucket = ROOMY, per_ip: Bucket = SMALL, reserve: float = 0.0, **kw: object
) -> tuple[VerificationBudget, Clock, Metrics]:
    clock, metrics = Clock(), Metrics()
    cfg = BudgetConfig(enabled=True, global_=global_, per_ip=per_ip, reserved_for_known=reserve)
    return VerificationBudget(cfg, metrics, now=clock, **kw), clock, metrics  # type: ignore[arg-type]


def rejections(metrics: Metrics, scope: str) -> float | None:
    return metrics.registry.get_sample_value(
        "authproxy_verification_budget_rejections_total", {"scope": scope}
    )


def passes(b: VerificationBudget, ip: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            b.acquire(ip)
            ok += 1
        except ProxyError as exc:
            assert exc.code == VERIFICATION_BUDGET_EXCEEDED
    return ok


@pytest.mark.parametrize(
    ("rate", "burst", "elapsed", "expected_wait"),
    [
        (1.0, 1, 0.0, 1.0),
        (2.0, 1, 0.0, 0.5),
        (1.0, 1, 0.25, 0.75),
        (1.0, 1, 5.0, 0.0),
    ],
)
def test_bucket_wait(rate: float, burst: int, elapsed: float, expected_wait: float) -> None:
    bucket = TokenBucket.full(Bucket(rate, burst), 0.0)
    bucket.take(0.0)
    assert bucket.wait(elapsed) == pytest.approx(expected_wait)


def test_bucket_never_exceeds_burst() -> None:
    bucket = TokenBucket.full(Bucket(10.0, 3), 0.0)
    bucket.refill(1e6)
    assert bucket.tokens == 3


def test_per_ip_burst_then_refill() -> None:
    b, clock, metrics = budget()
    assert passes(b, "10.0.0.1", 50) == 5
    assert passes(b, "10.0.0.2", 50) == 5  # another client has its own bucket
    clock.t += 2.0
    assert passes(b, "10.0.0.1", 50) == 2
    assert rejections(metrics, "per_ip") == 45 + 45 + 48


def test_global_bucket_bounds_a_flood_of_addresses() -> None:
    b, _, metrics = budget(global_=Bucket(1.0, 20), per_ip=Bucket(1.0, 5))
    ok = sum(passes(b, f"10.1.{i // 256}.{i % 256}", 5) for i in range(1000))
    assert ok == 20
    assert rejections(metrics, "global") == 5000 - 20


def test_refusal_spends_nothing() -> None:
    b, clock, _ = budget(global_=Bucket(1.0, 1), per_ip=Bucket(1.0, 5))
    assert passes(b, "a", 1) == 1
    assert passes(b, "b", 10) == 0  # global is empty: b's own bucket must stay full
    clock.t += 1.0
    assert passes(b, "b", 10) == 1


def test_retry_after_is_whole_seconds_until_the_next_token() -> None:
    b, _, _ = budget(per_ip=Bucket(0.1, 1))
    b.acquire("a")
    with pytest.raises(ProxyError) as info:
        b.acquire("a")
    assert info.value.status == 429
    assert info.value.retry_after == 10
    assert info.value.headers()["Retry-After"] == "10"


def test_client_table_is_bounded() -> None:
    b, _, _ = budget(global_=Bucket(1e9, 10**9), max_clients=100)
    passes(b, "x", 1)
    for i in range(10_000):
        b.acquire(f"ip{i}")
    assert len(b._clients) <= 100


def test_disabled_budget_never_refuses() -> None:
    clock = Clock()
    cfg = BudgetConfig(enabled=False, global_=Bucket(1.0, 1), per_ip=Bucket(1.0, 1))
    b = VerificationBudget(cfg, now=clock)
    assert passes(b, "a", 100) == 100


@pytest.mark.parametrize(
    ("ip", "v4", "v6", "source"),
    [
        ("203.0.113.7", 32, 64, "203.0.113.7"),
        ("203.0.113.7", 24, 64, "203.0.113.0/24"),
        ("::ffff:203.0.113.7", 24, 64, "203.0.113.0/24"),  # IPv4-mapped: its IPv4 address
        ("2001:db8:1:2:aaaa::1", 32, 64, "2001:db8:1:2::/64"),  # a host's whole /64
        ("2001:db8:1:2:aaaa::1", 32, 128, "2001:db8:1:2:aaaa::1"),
        ("2001:db8:1:2:aaaa::1", 32, 48, "2001:db8:1::/48"),
        ("fe80::1%eth0", 32, 64, "fe80::/64"),
        ("", 32, 64, ""),  # no address known: one source for all of those
        ("not-an-ip", 24, 64, "not-an-ip"),
    ],
)
def test_source_of(ip: str, v4: int, v6: int, source: str) -> None:
    assert source_of(ip, v4, v6) == source


def test_addresses_of_one_prefix_share_one_source_bucket() -> None:
    clock, metrics = Clock(), Metrics()
    cfg = BudgetConfig(global_=ROOMY, per_ip=SMALL, ipv4_prefix=24, ipv6_prefix=64)
    b = VerificationBudget(cfg, metrics, now=clock)
    assert sum(passes(b, f"198.51.100.{i}", 5) for i in range(1, 50)) == 5
    assert passes(b, "198.51.101.1", 5) == 5  # the next /24 pays on its own
    assert sum(passes(b, f"2001:db8::{i:x}", 5) for i in range(1, 50)) == 5
    assert passes(b, "2001:db8:0:1::1", 5) == 5


def test_a_flood_of_unknown_tokens_never_reaches_the_reserve() -> None:
    b, clock, metrics = budget(global_=Bucket(1.0, 20), per_ip=Bucket(1.0, 5), reserve=0.25)
    flood = sum(passes(b, f"10.1.{i // 256}.{i % 256}", 5) for i in range(1000))
    assert flood == 15  # 20 less the reserve of 5
    # Known tokens re-verify from the reserve, never refused with a 429.
    assert [b.known_wait() for _ in range(5)] == [0.0] * 5
    assert b.known_wait() == pytest.approx(1.0)  # empty now: deferred, nothing spent
    assert rejections(metrics, "known") == 1
    # On the refill, known tokens come first: the flood waits until the reserve is back.
    clock.t += 3.0
    assert passes(b, "10.9.9.9", 1) == 0
    assert b.known_wait() == 0.0
    clock.t += 4.0
    assert passes(b, "10.9.9.8", 1) == 1


def test_the_reserve_never_takes_the_whole_bucket() -> None:
    b, _, _ = budget(global_=Bucket(1.0, 1), per_ip=Bucket(1.0, 5), reserve=0.9)
    assert passes(b, "a", 1) == 1


def test_disabled_budget_never_defers_known_tokens() -> None:
    cfg = BudgetConfig(enabled=False, global_=Bucket(1.0, 1), per_ip=Bucket(1.0, 1))
    b = VerificationBudget(cfg, now=Clock())
    assert [b.known_wait() for _ in range(10)] == [0.0] * 10
