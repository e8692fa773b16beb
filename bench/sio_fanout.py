"""(f) The sockets leg: N Socket.IO clients over WebSocket, each with one of 100 M2M tokens
in `auth`, against the same python-socketio upstream directly and through the proxy (and,
with `--before DIR`, through the proxy of another checkout: the figures before a change),
side by side in one run. Per target:

* connect: all N open at once (a reconnect wave: no ramp) — seconds until the last
  CONNECT is acknowledged, and the rate;
* RSS of the proxy per 1,000 connections (RSS after the wave minus RSS before, at rest);
* idle CPU of the proxy (vCPU, sockets open, no broadcast; Engine.IO pings only);
* broadcast: one update a second to every client for `--seconds`: delivery p50/p99,
  lost updates (sent x N - received);
* loop stall: a separate process GETs the proxy's `/healthz` (the admin listener runs on
  the same loop) every 10 ms — the worst and p99 latency of that probe during the wave
  and during the broadcast is how long the loop stood still (the direct target's probe
  is the upstream's own loop, `GET /ping`);
* Clerk calls the proxy made (one per token is the promise).

Clients speak the Engine.IO 4 / Socket.IO 5 text protocol on raw aiohttp WebSockets (N
python-socketio clients would measure the client library on this 2-core box, not the
proxy). Prints one JSON line last (the harness reads it), a table before it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.harness import free_port, rss_mb, wait_port
from bench.serial import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
TOKENS = 100


class Tally:
    def __init__(self) -> None:
        self.connected = 0
        self.connected_at = 0.0
        self.latencies: list[float] = []
        self.received = 0
        self.failures = 0
        self.measuring = False


async def client(
    session: aiohttp.ClientSession, url: str, token: str, tally: Tally, stop: asyncio.Event
) -> None:
    try:
        async with session.ws_connect(
            url, timeout=aiohttp.ClientWSTimeout(ws_close=5), max_msg_size=0
        ) as ws:
            first = await ws.receive_str(timeout=120)
            assert first.startswith("0")
            await ws.send_str("40" + json.dumps({"token": token}))
            receiving = asyncio.ensure_future(ws.receive())
            stopping = asyncio.ensure_future(stop.wait())
            while True:
                await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    receiving.cancel()
                    return
                msg = receiving.result()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    stopping.cancel()
                    return
                data = msg.data
                if data == "2":
                    await ws.send_str("3")
                elif data.startswith('42["score"'):
                    if tally.measuring:
                        tally.latencies.append(time.time() - json.loads(data[2:])[1]["ts"])
                        tally.received += 1
                elif data.startswith("40"):
                    tally.connected += 1
                    tally.connected_at = time.monotonic()
                receiving = asyncio.ensure_future(ws.receive())
    except (aiohttp.ClientError, OSError, TimeoutError, AssertionError):
        tally.failures += 1


def probe(url: str, out: str) -> None:
    """`python -m bench.sio_fanout probe URL FILE`: GET url every 10 ms on one kept-alive
    connection, appending `start latency` lines (monotonic seconds) until killed."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with open(out, "a", buffering=1) as f:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        while True:
            start = time.monotonic()
            try:
                conn.request("GET", parts.path)
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                f.write(f"{start:.4f} -1\n")
                continue
            f.write(f"{start:.4f} {time.monotonic() - start:.5f}\n")
            time.sleep(max(0.0, 0.01 - (time.monotonic() - start)))


def window(samples: list[tuple[float, float]], t0: float, t1: float) -> dict[str, float]:
    lat = sorted(lat for t, lat in samples if t0 <= t <= t1 and lat >= 0)
    failed = sum(1 for t, lat in samples if t0 <= t <= t1 and lat < 0)
    if not lat:
        return {"max_ms": 0.0, "p99_ms": 0.0, "probes": 0, "failed": failed}
    return {
        "max_ms": round(lat[-1] * 1000, 1),
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1),
        "probes": len(lat),
        "failed": failed,
    }


def post(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


def proxy_config(tmp: Path, port: int, admin: int, up_port: int, clerk_port: int) -> Path:
    config = tmp / "sio.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "bench",
                "allow_inline_secrets": True,
                "listen": {"host": "127.0.0.1", "port": port},
                "admin": {"host": "127.0.0.1", "port": admin},
                "upstream": {"url": f"http://127.0.0.1:{up_port}"},
                "clerk": {
                    "api_url": f"http://127.0.0.1:{clerk_port}",
                    "secret_key": "sk_test_emulator",
                },
                "routes": [
                    {"name": "socketio", "path": "/socket.io/**", "auth": "optional"},
                    {"name": "ping", "path": "/ping", "methods": ["GET"], "auth": "public"},
                ],
                "logging": {
                    "level": os.environ.get("BENCH_LOG", "WARNING"),
                    "access_log": bool(os.environ.get("BENCH_LOG")),
                },
                "websocket": {"compression": False},
                # Every bench client comes from 127.0.0.1: the per-address budget for unknown
                # tokens (5/s) would spread the wave's 100 first verifications over 16 s.
                "verification_budget": {"enabled": False},
            }
        )
    )
    return config


async def measure(
    args: argparse.Namespace, name: str, root: Path | None, tokens: list[str], clerk_port: int
) -> dict[str, Any]:
    """One target: "direct" (root None) or a proxy run from the checkout `root`."""
    up_port, port, admin = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp())
    probes = tmp / "probe.txt"
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.sio_upstream", str(up_port), "1.0"], cwd=ROOT
            )
        )
        wait_port(up_port)
        target_port = up_port
        pid = procs[0].pid
        if root is not None:
            python = root / ".venv" / "bin" / "python"
            config = proxy_config(tmp, port, admin, up_port, clerk_port)
            procs.append(
                subprocess.Popen(
                    [str(python), "-m", "proxy.process.cli", "run", "--config", str(config)],
                    cwd=root,
                    stderr=subprocess.DEVNULL,
                    env=dict(os.environ),
                )
            )
            wait_port(port, 60.0)  # a loaded box: the last target's sockets still closing
            target_port, pid = port, procs[-1].pid
        # The proxy's own loop answers /healthz (the admin listener shares it); the
        # direct target's probe is the upstream's loop.
        probe_url = (
            f"http://127.0.0.1:{admin}/healthz"
            if root is not None
            else f"http://127.0.0.1:{up_port}/ping"
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.sio_fanout", "probe", probe_url, str(probes)],
                cwd=ROOT,
            )
        )
        await asyncio.sleep(1.0)
        calls0 = clerk_calls(clerk_port)
        rss0 = rss_mb(pid)
        url = f"ws://127.0.0.1:{target_port}/socket.io/?EIO=4&transport=websocket"
        tally = Tally()
        stop = asyncio.Event()
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn) as session:
            wave0, wave_at = time.monotonic(), time.time()
            tasks = [
                asyncio.create_task(client(session, url, tokens[i % len(tokens)], tally, stop))
                for i in range(args.clients)
            ]
            while tally.connected + tally.failures < args.clients:
                await asyncio.sleep(0.05)
                if time.monotonic() - wave0 > 60:
                    break
            wave1 = time.monotonic()
            connect_s = (tally.connected_at or wave1) - wave0
            await asyncio.sleep(2.0)  # settle
            rss1 = rss_mb(pid)
            cpu0, idle0 = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(args.idle_seconds)
            idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - idle0)
            tally.measuring = True
            b0 = time.monotonic()
            cpu0 = cpu_seconds(pid)
            post(f"http://127.0.0.1:{up_port}/start")
            await asyncio.sleep(args.seconds)
            sent = post(f"http://127.0.0.1:{up_port}/stop")["sent"]
            b_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - b0)
            await asyncio.sleep(3.0)  # the last update's stragglers
            b1 = time.monotonic()
            tally.measuring = False
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        calls = clerk_calls(clerk_port) - calls0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    samples: list[tuple[float, float]] = []
    if probes.exists():
        for line in probes.read_text().splitlines():
            t, lat = line.split()
            samples.append((float(t), float(lat)))
    lat = sorted(tally.latencies)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else 0.0

    return {
        "target": name,
        "clients": args.clients,
        "connected": tally.connected,
        "failures": tally.failures,
        "connect_s": round(connect_s, 2),
        "connect_per_s": round(tally.connected / connect_s) if connect_s > 0 else 0,
        "rss_mb_per_1k": round((rss1 - rss0) * 1000 / max(1, tally.connected), 2),
        "kb_per_conn": round((rss1 - rss0) * 1024 / max(1, tally.connected), 1),
        "idle_vcpu": round(idle_cpu, 3),
        "broadcast_vcpu": round(b_cpu, 3),
        "updates_sent": sent,
        "lost": sent * tally.connected - tally.received,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "stall_wave": window(samples, wave0, wave1),
        "wave_at": round(wave_at, 2),  # wall clock: to place a profile's samples
        "wave_s": round(wave1 - wave0, 2),
        "stall_broadcast": window(samples, b0, b1),
        "clerk_calls": calls if name != "direct" else 0,
    }


def clerk_calls(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__emulator/calls", timeout=5) as r:
        calls = json.loads(r.read())
    return sum(v for k, v in calls.items() if "verify" in k)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    emulator = None
    clerk_port = args.clerk_port
    if not clerk_port:
        clerk_port = free_port()
        emulator = subprocess.Popen(
            [sys.executable, "-m", "proxy.process.cli", "emulate-clerk", "--port", str(clerk_port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert emulator.stdout is not None
        seeded: dict[str, str] = json.loads(emulator.stdout.readline())
    else:
        seeded = {}
    try:
        wait_port(clerk_port)
        machine = args.machine_id or seeded.get("scores_partner_machine_id", "")
        tokens = (
            [
                post(
                    f"http://127.0.0.1:{clerk_port}/__emulator/m2m_tokens",
                    {"machine_id": machine, "seconds_until_expiration": 86400},
                )["secret"]
                for _ in range(TOKENS)
            ]
            if machine
            else [args.token]
        )
        targets: list[tuple[str, Path | None]] = [("direct", None), ("proxy", ROOT)]
        if args.skip_direct:
            del targets[0]
        for before in args.before:
            # One `--before` is "proxy_before"; more (builds compared in one run) are
            # named by their directory.
            name = "proxy_before" if len(args.before) == 1 else Path(before).name
            targets.insert(len(targets) - 1, (name, Path(before)))
        rows = []
        for name, root in targets:
            # The clients are the instrument: N of them are ~100 tracked objects each, and
            # a full collection of that heap (0.3-1.1 s at 5,000) would show up as latency
            # and stalls of whichever target is being measured. Collected between targets.
            gc.disable()
            try:
                rows.append(await measure(args, name, root, tokens, clerk_port))
            finally:
                gc.enable()
                gc.collect()
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(10)
    return {"clients": args.clients, "tokens": len(tokens), "seconds": args.seconds, "rows": rows}


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    keys = [
        ("connected", "connected"),
        ("connect_s", "connect wave (s)"),
        ("connect_per_s", "connects/s"),
        ("rss_mb_per_1k", "RSS MB per 1,000"),
        ("kb_per_conn", "KB per connection"),
        ("idle_vcpu", "idle vCPU"),
        ("broadcast_vcpu", "vCPU while broadcasting"),
        ("p50_ms", "broadcast p50 ms"),
        ("p99_ms", "broadcast p99 ms"),
        ("lost", "lost updates"),
        ("clerk_calls", "Clerk calls"),
    ]
    head = f"{'N = ' + str(result['clients']):<26}" + "".join(f"{r['target']:>16}" for r in rows)
    lines = [head]
    for key, label in keys:
        lines.append(f"{label:<26}" + "".join(f"{r[key]:>16}" for r in rows))
    for phase in ("stall_wave", "stall_broadcast"):
        label = "loop stall " + phase.split("_")[1] + " ms"
        lines.append(
            f"{label:<26}"
            + "".join(
                f"{str(r[phase]['max_ms']) + ' / ' + str(r[phase]['p99_ms']):>16}" for r in rows
            )
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        probe(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="broadcast seconds")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--clerk-port", type=int, default=0, help="an emulator already running")
    parser.add_argument("--machine-id", default="", help="its partner machine (with --clerk-port)")
    parser.add_argument("--token", default="", help="with --clerk-port and no --machine-id")
    parser.add_argument(
        "--before",
        action="append",
        default=[],
        help="another checkout (with its .venv) to compare; repeat for more",
    )
    parser.add_argument(
        "--skip-direct", action="store_true", help="proxies only (diagnosis: no share of direct)"
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(run(args))
    print(table(result), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
