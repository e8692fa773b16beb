"""An open-loop load generator: requests start on a fixed timetable (rate per second),
whatever the server does, and latency is measured from the *scheduled* start, so a slow
server cannot hide its queueing (no coordinated omission). Prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp


async def run(url: str, rate: float, seconds: float, headers: dict[str, str]) -> dict[str, float]:
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter() + 0.2

        async def one(i: int) -> None:
            nonlocal errors
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append(time.perf_counter() - scheduled)

        await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(total))), timeout=seconds + 30
        )
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    return {
        "requests": total,
        "ok": len(latencies),
        "errors": errors,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
    }


def main() -> None:
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    headers = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(json.dumps(asyncio.run(run(url, rate, seconds, headers))))


if __name__ == "__main__":
    main()
