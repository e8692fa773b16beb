"""CPU per request of the process under test, with one keep-alive client sending one
request at a time: no batching, no queueing, so the figure moves little between runs —
the steadiest way on a shared box to see what one step of the request path costs (for
example auth on a cache hit: leg (d) against leg (c)).

    python -m bench.serial PORT PID SECONDS PATH [HEADER-JSON]   -> one JSON line
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time

SEQ = "{seq}"  # a header value that becomes a new 16-hex-digit number on every request
# A header value that becomes a new W3C traceparent (trace and parent id from the same
# number) on every request: what a traced client sends.
TRACE = "{trace}"
_NUMBERED = re.compile(b"(" + re.escape(SEQ.encode()) + b"|" + re.escape(TRACE.encode()) + b")")


def client_request(target: str, host: str, headers: dict[str, str]) -> list[str]:
    """The lines of a GET as an HTTP client library sends it, plus `headers`: what the
    open-loop legs send, and what the instruction counts are taken on."""
    return [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "User-Agent: bench-openloop/1",
        "Accept: */*",
        "Accept-Encoding: gzip, deflate",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]


class Requests:
    """The bytes of one request, again and again. A header whose value is SEQ (TRACE)
    gets a fresh number (traceparent) each time, as X-Request-Id or traceparent do in
    real traffic: then no two heads on a connection are the same bytes (what the proxy
    remembers per connection does not apply)."""

    def __init__(self, lines: list[str]) -> None:
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # Literal bytes and numbered fields, alternating (re.split keeps the tokens).
        self._parts = _NUMBERED.split(raw)
        self._n = 0

    def next(self) -> bytes:
        if len(self._parts) == 1:
            return self._parts[0]
        self._n += 1
        n = self._n
        return b"".join(
            part
            if i % 2 == 0
            else b"%016x" % n
            if part == SEQ.encode()
            else b"00-%032x-%016x-01" % (n, n)
            for i, part in enumerate(self._parts)
        )


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def exchange(sock: socket.socket, request: bytes) -> bool:
    """Send one request and read its whole answer (framed by Content-Length, as every
    leg's is); True for a 200."""
    sock.sendall(request)
    buffered = b""
    while True:
        head_end = buffered.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buffered[:head_end].lower()
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            if len(buffered) >= head_end + 4 + length:
                return head.startswith(b"http/1.1 200")
        got = sock.recv(65536)
        if not got:
            raise SystemExit("the server closed the connection")
        buffered += got


def run(port: int, pid: int, seconds: float, path: str, headers: dict[str, str]) -> dict[str, float]:
    requests = Requests(
        [f"GET {path} HTTP/1.1", "Host: bench", *(f"{k}: {v}" for k, v in headers.items())]
    )
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done, errors = 0, 0
    before, end = cpu_seconds(pid), time.perf_counter() + seconds
    while time.perf_counter() < end:
        errors += not exchange(sock, requests.next())
        done += 1
    used = cpu_seconds(pid) - before
    sock.close()
    return {"requests": done, "errors": errors, "cpu_us_per_request": used / max(1, done) * 1e6}


def main() -> None:
    port, pid, seconds, path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    headers = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    print(json.dumps(run(port, pid, seconds, path, headers)))


if __name__ == "__main__":
    main()
