"""`make soak`: mixed REST + Socket.IO traffic through one proxy process for minutes, with
tokens that expire and are re-verified, reporting the proxy's RSS, open fds and open
client connections once a minute; fails when RSS or fds grow faster than a bound after
the warm-up.

The proxy runs as `clerk-auth-proxy run` (fast path on), against the Clerk emulator and a
local upstream (`bench/soak_upstream.py`: a REST echo and a python-socketio server with an
acknowledged `echo` event). Load, all from this process:

- REST: `--rest-clients` keep-alive loops on a required route, each with an opaque M2M
  token or a session JWT that lives `--token-life` seconds; an expired token (401) is
  replaced by a fresh one from the emulator. The cache TTL is short (`--cache-ttl`), so
  every token is re-verified several times in its life.
- Socket.IO: `--sio-clients` python-socketio clients over WebSocket, each with its own
  token in `auth`, emitting an acknowledged `echo` every `--sio-every` seconds. The proxy
  re-verifies each socket's token every cache TTL and disconnects it at expiry; the
  client then reconnects with a fresh token.

Prints one JSON line per minute and a summary; exit 1 when the RSS slope (least squares
over the minutes after `--warmup`) exceeds `--max-rss-slope` MB/min or the fd slope
exceeds `--max-fd-slope` per minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import socketio
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
USER = "user_2xYsoak00000000000000000001"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as resp:
                    await resp.read()
                    return
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


@dataclass
class Counts:
    rest_ok: int = 0
    rest_refused: int = 0
    rest_errors: int = 0
    sio_acks: int = 0
    sio_errors: int = 0
    sio_connects: int = 0
    sio_expired: int = 0
    tokens_minted: int = 0


@dataclass
class Tokens:
    """Fresh tokens from the emulator's control routes: opaque M2M and session JWTs."""

    session: aiohttp.ClientSession
    emulator: str
    machine: str
    life: float
    counts: Counts
    jwt_share: float = 0.5
    rng: random.Random = field(default_factory=lambda: random.Random(19))

    async def fresh(self) -> str:
        self.counts.tokens_minted += 1
        if self.rng.random() < self.jwt_share:
            body: dict[str, Any] = {"user_id": USER, "expires_in": self.life}
            async with self.session.post(f"{self.emulator}/__emulator/session_tokens", json=body) as r:
                return str((await r.json())["token"])
        body = {"machine_id": self.machine, "seconds_until_expiration": self.life}
        async with self.session.post(f"{self.emulator}/__emulator/m2m_tokens", json=body) as r:
            return str((await r.json())["secret"])


async def rest_client(n: int, base: str, tokens: Tokens, args: argparse.Namespace, stop: asyncio.Event) -> None:
    counts = tokens.counts
    token = await tokens.fresh()
    sent = 0
    while not stop.is_set():
        # A fresh connection now and then: connection churn is part of the load.
        async with aiohttp.ClientSession() as s:
            for _ in range(args.requests_per_connection):
                if stop.is_set():
                    return
                sent += 1
                headers = {"Authorization": f"Bearer {token}"}
                try:
                    if sent % 10 == 0:  # a body: aiohttp's side of the door
                        call = s.post(f"{base}/api/c{n}/{sent}", data=b"x" * 2048, headers=headers)
                    else:
                        call = s.get(f"{base}/api/c{n}/{sent}", headers=headers)
                    async with call as resp:
                        await resp.read()
                        if resp.status == 200:
                            counts.rest_ok += 1
                        elif resp.status == 401:
                            counts.rest_refused += 1
                            token = await tokens.fresh()
                        else:
                            counts.rest_errors += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts.rest_errors += 1
                    await asyncio.sleep(0.5)
                await asyncio.sleep(args.rest_every)


async def sio_client(n: int, base: str, tokens: Tokens, args: argparse.Namespace, stop: asyncio.Event) -> None:
    counts = tokens.counts
    transports = ["websocket"] if n % 2 else ["polling", "websocket"]
    await asyncio.sleep(n * args.sio_every / max(1, args.sio_clients))  # spread the emits
    while not stop.is_set():
        client = socketio.AsyncClient(reconnection=False)
        gone = asyncio.Event()

        @client.event  # type: ignore[misc]
        async def disconnect(*_: Any, gone: asyncio.Event = gone) -> None:
            gone.set()

        try:
            token = await tokens.fresh()
            await client.connect(base, auth={"token": token}, transports=transports, wait_timeout=15)
            counts.sio_connects += 1
            while not stop.is_set() and not gone.is_set():
                try:
                    answer = await client.call("echo", {"n": n}, timeout=15)
                    if answer == {"n": n}:
                        counts.sio_acks += 1
                    else:
                        counts.sio_errors += 1
                except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
                    if not gone.is_set():
                        counts.sio_errors += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), args.sio_every)
            if gone.is_set():
                counts.sio_expired += 1
        except (socketio.exceptions.ConnectionError, aiohttp.ClientError, TimeoutError):
            counts.sio_errors += 1
            await asyncio.sleep(1)
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 with fewer than two points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in points) / sxx


def measure(proc: psutil.Process, port: int) -> dict[str, float]:
    conns = [
        c for c in proc.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]
    return {
        "rss_mb": round(proc.memory_info().rss / 2**20, 2),
        "fds": proc.num_fds(),
        "client_connections": len(conns),
    }


async def run(args: argparse.Namespace, tmp: Path) -> int:
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*cmd: str, env: dict[str, str] | None = None, stdout: Any = subprocess.DEVNULL,
              stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=stdout, stderr=stderr)
        procs.append(proc)
        return proc

    try:
        emu_port, up_port, port, admin = free_port(), free_port(), free_port(), free_port()
        emu = spawn(PY, "-m", "proxy.process.cli", "emulate-clerk", "--port", str(emu_port), stdout=subprocess.PIPE)
        assert emu.stdout is not None
        seeds = json.loads(emu.stdout.readline())
        spawn(PY, str(HERE / "soak_upstream.py"), str(up_port))
        config = {
            "environment": "soak",
            "allow_inline_secrets": True,  # the emulator's key
            "listen": {"host": "127.0.0.1", "port": port},
            "admin": {"host": "127.0.0.1", "port": admin},
            "upstream": {"url": f"http://127.0.0.1:{up_port}"},
            "clerk": {"api_url": seeds["url"], "secret_key": seeds["secret_key"]},
            "cache": {"ttl_seconds": args.cache_ttl},
            "verification_budget": {"enabled": False},
            "routes": [
                {"name": "socketio", "path": "/socket.io/**", "auth": "optional"},
                {"name": "api", "path": "/api/**", "auth": "required"},
            ],
            "logging": {"level": "WARNING", "access_log": False},
            "shutdown": {"grace_period": 2},
        }
        (tmp / "proxy.yaml").write_text(yaml.safe_dump(config))
        cmd = [PY, "-m", "proxy.process.cli"]
        env = {}
        if args.trace:
            cmd = [PY, str(HERE / "soak_traced.py")]
            env = {"SOAK_SNAPSHOT": str(tmp / "heap")}
        log = (tmp / "proxy.log").open("wb")
        proxy = spawn(*cmd, "run", "--config", str(tmp / "proxy.yaml"), env=env, stderr=log)
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"http://127.0.0.1:{admin}/healthz")
        await wait_http(f"http://127.0.0.1:{up_port}/api/ready")
        watched = psutil.Process(proxy.pid)

        counts = Counts()
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as control:
            tokens = Tokens(control, seeds["url"], seeds["scores_partner_machine_id"], args.token_life, counts)
            tasks = [asyncio.create_task(rest_client(i, base, tokens, args, stop)) for i in range(args.rest_clients)]
            tasks += [asyncio.create_task(sio_client(i, base, tokens, args, stop)) for i in range(args.sio_clients)]
            samples: list[dict[str, Any]] = []
            started = time.monotonic()
            print(json.dumps({"soak": "started", "minutes": args.minutes, "proxy_pid": proxy.pid, **measure(watched, port)}), flush=True)
            for minute in range(1, int(args.minutes) + 1):
                await asyncio.sleep(started + minute * args.every - time.monotonic())
                if proxy.poll() is not None:
                    print(json.dumps({"soak": "proxy died", "code": proxy.returncode}), flush=True)
                    return 2
                if args.trace and minute in (int(args.warmup), int(args.minutes)):
                    proxy.send_signal(signal.SIGUSR1)
                sample = {"minute": minute, **measure(watched, port), **asdict(counts)}
                samples.append(sample)
                print(json.dumps(sample), flush=True)
            stop.set()
            await asyncio.wait(tasks, timeout=20)
            for t in tasks:
                t.cancel()
        after = [s for s in samples if s["minute"] > args.warmup]
        rss = slope([(s["minute"], s["rss_mb"]) for s in after])
        fds = slope([(s["minute"], s["fds"]) for s in after])
        conns = slope([(s["minute"], s["client_connections"]) for s in after])
        ok = rss <= args.max_rss_slope and fds <= args.max_fd_slope
        print(json.dumps({
            "soak": "done", "ok": ok, "minutes": args.minutes, "warmup": args.warmup,
            "rss_slope_mb_per_min": round(rss, 4), "fd_slope_per_min": round(fds, 3),
            "connection_slope_per_min": round(conns, 3),
            "rss_first_mb": after[0]["rss_mb"] if after else None,
            "rss_last_mb": after[-1]["rss_mb"] if after else None,
            "bounds": {"rss_mb_per_min": args.max_rss_slope, "fds_per_min": args.max_fd_slope},
            **asdict(counts),
        }), flush=True)
        if args.trace:
            await asyncio.sleep(3)
            report_heap(tmp)
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def report_heap(tmp: Path) -> None:
    import tracemalloc

    first, last = tmp / "heap.1", tmp / "heap.2"
    if not (first.exists() and last.exists()):
        print(json.dumps({"soak": "no heap snapshots"}))
        return
    old = tracemalloc.Snapshot.load(str(first))
    new = tracemalloc.Snapshot.load(str(last))
    for stat in new.compare_to(old, "traceback")[:10]:
        print(f"{stat.size_diff:+d} B in {stat.count_diff:+d} blocks")
        for line in stat.traceback.format()[-12:]:
            print("   ", line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5, help="minutes left out of the slopes")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--rest-clients", type=int, default=10)
    parser.add_argument("--rest-every", type=float, default=0.1)
    parser.add_argument("--requests-per-connection", type=int, default=50)
    parser.add_argument("--sio-clients", type=int, default=200)
    parser.add_argument("--sio-every", type=float, default=2.0)
    parser.add_argument("--token-life", type=float, default=60.0)
    parser.add_argument("--cache-ttl", type=float, default=5.0)
    parser.add_argument("--max-rss-slope", type=float, default=0.05, help="MB per minute")
    parser.add_argument("--max-fd-slope", type=float, default=0.5, help="fds per minute")
    parser.add_argument("--trace", action="store_true", help="tracemalloc snapshots at warm-up and end")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clerk-soak-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
