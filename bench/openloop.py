"""An open-loop load generator: requests start on a fixed timetable (rate per second),
whatever the server does, and latency is measured from the *scheduled* start, so a slow
server cannot hide its queueing (no coordinated omission). Prints one JSON line.

It speaks HTTP/1.1 over raw keep-alive connections (a request in flight per connection;
a new connection when none is idle) with the headers a typical HTTP client library sends,
and reads answers by Content-Length. A generator built on an HTTP client library spends
several times the CPU of the server it measures: on a 2-core box it then competes with
the process under test for the same cores and caches, and the CPU figure moves with the
generator rather than the server.

    python -m bench.openloop URL RATE SECONDS [HEADER-JSON]   (a value "{seq}": numbered)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from urllib.parse import urlsplit

from bench.serial import Requests, client_request

MAX_CONNECTIONS = 256


class Connection(asyncio.Protocol):
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.scheduled = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, scheduled: float) -> None:
        assert self.transport is not None
        self.scheduled = scheduled
        self.transport.write(self.gen.requests.next())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        marker = head.find(b"\r\ncontent-length:")
        if marker < 0:
            self.gen.failed(self)
            return
        length = int(head[marker + 17 :].split(b"\r\n", 1)[0])
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = b""
        self.gen.answered(self, head.startswith(b"http/1.1 200"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.gen.failed(self)


class Generator:
    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.requests = Requests(client_request(target, parts.netloc, headers))
        self.idle: list[Connection] = []
        self.open = 0
        self.waiting: deque[float] = deque()
        self.latencies: list[float] = []
        self.errors = 0
        self.outstanding = 0
        self.connecting: set[asyncio.Task[None]] = set()

    def start(self, scheduled: float) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(scheduled)
        elif self.open < MAX_CONNECTIONS:
            self.open += 1
            task = asyncio.ensure_future(self._connect(scheduled))
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)
        else:
            self.waiting.append(scheduled)

    async def _connect(self, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        conn = Connection(self)
        try:
            await loop.create_connection(lambda: conn, self.host, self.port)
        except OSError:
            self.open -= 1
            self._finish(ok=False)
            return
        conn.send(scheduled)

    def answered(self, conn: Connection, ok: bool) -> None:
        if ok:
            self.latencies.append(time.perf_counter() - conn.scheduled)
        self._finish(ok=ok)
        if self.waiting:
            conn.send(self.waiting.popleft())
        else:
            self.idle.append(conn)

    def failed(self, conn: Connection) -> None:
        if conn.transport is not None:
            conn.transport.abort()
            return  # connection_lost follows
        if conn in self.idle:
            self.idle.remove(conn)
            self.open -= 1
            return
        self.open -= 1
        self._finish(ok=False)

    def _finish(self, *, ok: bool) -> None:
        self.errors += not ok
        self.outstanding -= 1

    async def run(self, rate: float, seconds: float) -> None:
        total = int(rate * seconds)
        start = time.perf_counter() + 0.2
        sent = 0
        while sent < total:
            now = time.perf_counter()
            while sent < total and start + sent / rate <= now:
                self.start(start + sent / rate)
                sent += 1
            if sent < total:
                await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
        deadline = time.perf_counter() + 30
        while self.outstanding and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        self.errors += self.outstanding
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def run(url: str, rate: float, seconds: float, headers: dict[str, str]) -> dict[str, float]:
    gen = Generator(url, headers)
    await gen.run(rate, seconds)
    latencies = sorted(gen.latencies)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    return {
        "requests": int(rate * seconds),
        "ok": len(latencies),
        "errors": gen.errors,
        "connections": gen.open,
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
