"""What verification costs a fleet, with and without the shared level: a model, no I/O.

Each partner's token is re-verified once per TTL by every cache that sees it in that TTL.
Requests are spread evenly over the pods, so a partner sending r requests a second shows
its token to one pod within a TTL of T seconds with probability 1 - exp(-r T / pods):
- per-pod caches: pods x (1 - exp(-r T / pods)) calls per token per TTL;
- one shared cache: 1 - exp(-r T) calls per token per TTL (at most one).
Partner rates follow Zipf over the fleet's total request rate (a few partners send most
of the traffic). Prices: Clerk bills per opaque-token verification; NOTES.md quotes
$0.0001 (the partner documentation) and $0.00001 after 100,000 free a month (Clerk's
current docs); both are shown. Clerk's production rate limit is 1,000 requests per 10 s.

    python -m bench.cluster_cost [--partners 10000] [--pods 200] [--rps 20000] [--ttl 60]

Prints one JSON object (and a table with --table).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

SECONDS_PER_MONTH = 30 * 86_400
RATE_LIMIT_PER_SECOND = 1000 / 10
FREE_PER_MONTH = 100_000
PRICES = {"usd_per_call_0.0001": 0.0001, "usd_per_call_0.00001_after_100k_free": 0.00001}


def zipf_rates(partners: int, total_rps: float, s: float) -> list[float]:
    weights = [1 / (k**s) for k in range(1, partners + 1)]
    scale = total_rps / sum(weights)
    return [w * scale for w in weights]


def calls_per_second(rates: list[float], pods: int, ttl: float, shared: bool) -> float:
    per_ttl = 0.0
    for r in rates:
        if shared:
            per_ttl += 1 - math.exp(-r * ttl)
        else:
            per_ttl += pods * (1 - math.exp(-r * ttl / pods))
    return per_ttl / ttl


def dollars(calls_per_s: float) -> dict[str, float]:
    month = calls_per_s * SECONDS_PER_MONTH
    out = {}
    for name, price in PRICES.items():
        billable = month if "free" not in name else max(0.0, month - FREE_PER_MONTH)
        out[name] = round(billable * price, 2)
    return out


def model(partners: int, pods: int, total_rps: float, ttl: float, s: float) -> dict[str, Any]:
    rates = zipf_rates(partners, total_rps, s)
    result: dict[str, Any] = {
        "partners": partners,
        "pods": pods,
        "requests_per_second": total_rps,
        "ttl_seconds": ttl,
        "zipf_s": s,
    }
    for name, shared in (("per_pod_caches", False), ("shared_level", True)):
        cps = calls_per_second(rates, pods, ttl, shared)
        result[name] = {
            "clerk_calls_per_second": round(cps, 1),
            "calls_per_month_millions": round(cps * SECONDS_PER_MONTH / 1e6, 1),
            "share_of_clerk_rate_limit": round(cps / RATE_LIMIT_PER_SECOND, 2),
            "usd_per_month": dollars(cps),
        }
    result["ratio"] = round(
        result["per_pod_caches"]["clerk_calls_per_second"]
        / max(result["shared_level"]["clerk_calls_per_second"], 1e-9),
        1,
    )
    # The TTL at which the shared level stays under Clerk's rate limit for these partners.
    busy = sum(1 for r in rates if r * ttl >= 1)
    result["ttl_to_stay_under_rate_limit_seconds"] = math.ceil(partners / RATE_LIMIT_PER_SECOND)
    result["partners_seen_every_ttl"] = busy
    return result


def table(r: dict[str, Any]) -> str:
    lines = [
        f"{r['partners']:,} partners x {r['pods']} pods, {r['requests_per_second']:,} req/s "
        f"(Zipf s={r['zipf_s']}), TTL {r['ttl_seconds']:g} s",
        "",
        "| | Clerk calls/s | calls/month | of Clerk's rate limit | $/month at $0.0001 | $/month at $0.00001 (100k free) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("per_pod_caches", "shared_level"):
        x = r[name]
        usd = list(x["usd_per_month"].values())
        lines.append(
            f"| {name.replace('_', ' ')} | {x['clerk_calls_per_second']:,} | "
            f"{x['calls_per_month_millions']:,} M | {x['share_of_clerk_rate_limit']:.0%} | "
            f"${usd[0]:,.0f} | ${usd[1]:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--partners", type=int, default=10_000)
    p.add_argument("--pods", type=int, default=200)
    p.add_argument("--rps", type=float, default=20_000.0, help="the fleet's total request rate")
    p.add_argument("--ttl", type=float, default=60.0)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--table", action="store_true")
    a = p.parse_args()
    r = model(a.partners, a.pods, a.rps, a.ttl, a.zipf)
    print(table(r) if a.table else json.dumps(r))


if __name__ == "__main__":
    main()
