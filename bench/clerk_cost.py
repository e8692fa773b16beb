"""What Clerk would bill: calls per 1M requests, simulated on the real cache and budget
(`proxy.cache.VerificationCache`, `proxy.budget.VerificationBudget`) with a fake clock, so a
simulated hour takes seconds. Prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import statistics

from proxy.auth.budget import VerificationBudget
from proxy.auth.cache.store import VerificationCache
from proxy.config.load import Bucket, Cache
from proxy.config.load import VerificationBudget as BudgetConfig
from proxy.core.errors import ProxyError
from proxy.core.principal import Principal
from proxy.observe.metrics import Metrics

# The realm of an opaque token's verdicts (`config.realms`): rejections cached, as Clerk's.
REALM = bytes(16)

PRICES = {"usd_at_0.0001": 0.0001, "usd_at_0.00001": 0.00001}


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def principal(i: int) -> Principal:
    return Principal(type="machine", id=f"mch_{i:027d}", token_type="m2m_token", token_id=f"mt_{i:032x}", scopes=frozenset({"mch_api"}))


async def zipf_mix(requests: int, rate: float, tokens: int, ttl: float, s: float) -> int:
    clock = Clock()
    cache = VerificationCache(Cache(ttl_seconds=ttl), b"scope", Metrics(), now=clock)
    weights = [1 / (k**s) for k in range(1, tokens + 1)]
    rng = random.Random(7)
    picks = rng.choices(range(tokens), weights=weights, k=requests)
    keys = [cache.key(f"mt_secret_{i}") for i in range(tokens)]
    calls = 0

    def loader(i: int):  # type: ignore[no-untyped-def]
        async def load() -> Principal:
            nonlocal calls
            calls += 1
            return principal(i)

        return load

    loaders = [loader(i) for i in range(tokens)]
    step = 1 / rate
    for i in picks:
        clock.t += step
        await cache.get(keys[i], loaders[i], realm=REALM)
    return calls


async def herd(tokens: int, per_token: int) -> int:
    cache = VerificationCache(Cache(ttl_seconds=60), b"scope", Metrics())
    calls = 0

    async def load(i: int) -> Principal:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # a Clerk round trip: everyone arrives before it lands
        return principal(i)

    await asyncio.gather(
        *(cache.get(cache.key(f"t{i}"), lambda i=i: load(i), realm=REALM) for i in range(tokens) for _ in range(per_token))
    )
    return calls


async def known_tokens(refresh_ahead: float, ttl: float = 60.0, hours: float = 1.0) -> dict[str, float]:
    """Clerk calls per known token per hour through the real verifier (`ClerkVerifier`:
    cache, refresh ahead, budget), Clerk replaced by a counter: 20 busy partners (a request
    a second each) and one quiet one (a request every 90 s, more than a TTL)."""
    import aiohttp

    from proxy.auth.verifier import ClerkVerifier
    from proxy.config.load import build_config

    clock = Clock()
    config = build_config(
        {"upstream": {"url": "http://127.0.0.1:1"},
         "clerk": {"api_url": "http://127.0.0.1:1", "secret_key": "sk_test_bench"},
         "cache": {"ttl_seconds": ttl, "refresh_ahead": refresh_ahead}},
        file="bench",
    )
    metrics = Metrics()
    calls: dict[str, list[float]] = {}
    async with aiohttp.ClientSession() as session:
        verifier = ClerkVerifier(config, session, metrics, now=clock)

        async def clerk(kind: object, token: str) -> Principal:
            calls.setdefault(token, []).append(clock.t)
            return principal(int(token.rsplit("_", 1)[1]))

        verifier.clerk.verify = clerk  # type: ignore[method-assign,assignment]
        busy = [f"mt_bench_secret_token_{i}" for i in range(20)]
        quiet = "mt_bench_secret_token_99"
        start = clock.t
        waited = 0
        for second in range(int(hours * 3600)):
            clock.t = start + second
            for n, token in enumerate(busy + ([quiet] if second % 90 == 0 else [])):
                if verifier.cached(token) is None:
                    waited += token != quiet
                    await verifier.verify(token, f"192.0.2.{n}")
            await verifier.cache.idle()
        await verifier.close()
    per_busy = [len(calls[t]) for t in busy]
    gaps = [b - a for t in busy for a, b in zip(calls[t], calls[t][1:], strict=False)]
    return {
        "calls_per_busy_token_per_hour": round(statistics.mean(per_busy), 1),
        "fresh_periods_per_hour": round(hours * 3600 / ttl, 1),
        "shortest_gap_between_calls_in_ttls": round(min(gaps) / ttl, 3),
        "busy_requests_that_waited_for_clerk": waited - len(busy),  # beyond each first one
        "calls_for_the_quiet_token_per_hour": len(calls[quiet]),
    }


def flood(requests: int, seconds: float, ips: int, budget: BudgetConfig) -> int:
    clock = Clock()
    guard = VerificationBudget(budget, now=clock)
    allowed = 0
    rng = random.Random(11)
    for n in range(requests):
        clock.t = 1_000_000.0 + seconds * n / requests
        token_is_new = secrets.token_urlsafe(8)  # every token is unseen: every one a miss
        assert token_is_new
        try:
            guard.acquire(f"10.0.{rng.randrange(ips) // 256}.{rng.randrange(ips) % 256}")
        except ProxyError:
            continue
        allowed += 1
    return allowed


def priced(calls: int, per_requests: int) -> dict[str, float]:
    per_million = calls * 1_000_000 / per_requests
    return {"calls_per_1M": round(per_million, 1)} | {
        k: round(per_million * v, 4) for k, v in PRICES.items()
    }


def main() -> None:
    requests = 1_000_000
    mix = asyncio.run(zipf_mix(requests, rate=1000.0, tokens=100, ttl=60.0, s=1.1))
    cold = asyncio.run(herd(tokens=100, per_token=50))
    budget = BudgetConfig(global_=Bucket(rate=50, burst=200), per_ip=Bucket(rate=5, burst=20))
    flood_requests = 100_000
    flooded = flood(flood_requests, seconds=100.0, ips=1000, budget=budget)
    print(json.dumps({
        "zipf_100_tokens_ttl60_1000rps": {"requests": requests, "clerk_calls": mix, **priced(mix, requests)},
        "cold_start_herd_100_tokens_x50": {"requests": 5000, "clerk_calls": cold},
        "random_token_flood_100k_over_100s_1000_ips": {
            "requests": flood_requests, "clerk_calls": flooded,
            "bound": "unknown tokens: global burst 200 less the reserve for known tokens (25 %) + 50/s x 100 s = 5150",
        },
        "without_cache_per_1M": priced(requests, requests),
        # One call per fresh period for a token in use, each made ahead in the background.
        "known_token_ttl60_refresh_ahead": asyncio.run(known_tokens(0.2)),
        "known_token_ttl60_no_refresh_ahead": asyncio.run(known_tokens(0.0)),
    }))


if __name__ == "__main__":
    main()
