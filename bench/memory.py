"""RSS of a proxy process holding 0, 10k and 100k cached verifications: each count in a
fresh subprocess, entries made through the real cache exactly as the verifier makes them
(every token distinct; 500 partner machines, 50 scope sets, one claims shape — each
Principal built from scratch, as parsing Clerk's JSON does). Prints one JSON line."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def fill(n: int) -> tuple[float, float]:
    import proxy.app  # noqa: F401 - the whole proxy loaded, as in production
    from proxy.cache import VerificationCache
    from proxy.config import Cache
    from proxy.metrics import Metrics
    from proxy.principal import Principal, encode_claims

    cache = VerificationCache(Cache(ttl_seconds=3600, max_entries=200_000), b"s" * 32, Metrics())
    gc.collect()
    base = rss_mb()
    for i in range(n):
        p = Principal(
            "machine", f"mch_{i % 500:027d}", "m2m_token", f"mt_{i:032x}",
            frozenset({f"mch_{i % 50:027d}"}), encode_claims({"tier": "gold"}), None,
        )

        async def load(p: Principal = p) -> Principal:
            return p

        await cache.get(cache.key(f"mt_{i:048d}"), load)
    gc.collect()
    assert len(cache) == n
    total = rss_mb()
    return total, total - base


def child(n: int) -> None:
    total, added = asyncio.run(fill(n))
    print(json.dumps({"entries": n, "rss_mb": round(total, 1), "cache_mb": round(added, 1)}))


def main() -> None:
    if len(sys.argv) > 1:
        child(int(sys.argv[1]))
        return
    rows = []
    for n in (0, 10_000, 100_000):
        out = subprocess.run(
            [sys.executable, "-m", "bench.memory", str(n)], capture_output=True, text=True, check=True
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps({"rows": rows, "target": "<= 60 MB RSS at 100k"}))


if __name__ == "__main__":
    main()
