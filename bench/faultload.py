"""The callers of the fault runs (bench/faults.py): partners with known tokens, new
partners, strangers with made-up tokens, and a flood from many source addresses.

A tiny HTTP/1.1 client on asyncio streams (keep-alive, Content-Length bodies only: what
the proxy answers), so the load generator costs little beside the proxy it measures.
Every answer is recorded with the phase it was sent in and its latency.

    python -m bench.faultload flood PORT REQUESTS ADDRESSES CONCURRENCY -> one JSON line
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: int | None
    seconds: float


class Connection:
    """One keep-alive connection to the proxy, from `source` (a loopback address)."""

    def __init__(self, port: int, source: str | None = None) -> None:
        self.port = port
        self.source = source
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str, token: str) -> Answer:
        head = (
            f"GET {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        for attempt in (1, 2):
            if self._streams is None:
                local = (self.source, 0) if self.source else None
                self._streams = await asyncio.open_connection("127.0.0.1", self.port, local_addr=local)
            reader, writer = self._streams
            try:
                writer.write(head)
                raw = await reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
                continue
            status, fields = _parse(raw)
            await reader.readexactly(int(fields.get("content-length", "0")))
            if fields.get("connection", "").lower() == "close":
                self.close()
            retry = fields.get("retry-after")
            return Answer(status, int(retry) if retry and retry.isdigit() else None,
                          time.perf_counter() - started)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def _parse(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields


@dataclass
class Record:
    """What one kind of caller got, phase by phase."""

    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def add(self, phase: str, answer: Answer) -> None:
        self.statuses.setdefault(phase, Counter())[answer.status] += 1
        self.latencies.setdefault(phase, []).append(answer.seconds)


def stranger() -> str:
    """A well-shaped opaque M2M token nobody issued (Clerk answers 404)."""
    return "mt_" + secrets.token_urlsafe(36).replace("-", "a").replace("_", "b")


async def paced(rate: float, until: float, step: Callable[[], Awaitable[object]]) -> None:
    """Call `step` (a coroutine function) `rate` times a second until `until` (monotonic),
    one at a time: a slow answer delays the next, as a real client's would."""
    loop = asyncio.get_running_loop()
    due = loop.time() + secrets.randbelow(1000) / 1000 / rate
    while due < until:
        await asyncio.sleep(max(0.0, due - loop.time()))
        await step()
        due = max(due + 1 / rate, loop.time() - 1 / rate)


async def flood(port: int, requests: int, addresses: int, concurrency: int) -> dict[str, object]:
    """`requests` made-up tokens, spread over `addresses` loopback source addresses
    (127.1.x.y), `concurrency` connections at a time."""
    statuses: Counter[int] = Counter()
    sources = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(addresses)]
    per_worker = [requests // concurrency + (1 if i < requests % concurrency else 0)
                  for i in range(concurrency)]

    async def worker(n: int, first: int) -> None:
        conns: dict[str, Connection] = {}
        for i in range(n):
            source = sources[(first + i * concurrency) % len(sources)]
            conn = conns.get(source) or conns.setdefault(source, Connection(port, source))
            statuses[(await conn.get("/api/flood", stranger())).status] += 1
        for conn in conns.values():
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(n, i) for i, n in enumerate(per_worker)))
    return {"seconds": round(time.monotonic() - started, 2),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def main() -> None:
    if sys.argv[1] != "flood":
        raise SystemExit("usage: python -m bench.faultload flood PORT REQUESTS ADDRESSES CONCURRENCY")
    port, requests, addresses, concurrency = map(int, sys.argv[2:6])
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(json.dumps(asyncio.run(flood(port, requests, addresses, concurrency))), flush=True)


if __name__ == "__main__":
    main()
