"""(f) Socket.IO fan-out through the proxy: N clients connect over WebSocket with an M2M
token in `auth`, the upstream broadcasts a timestamped update every second, and we report
how many connected and the delivery latency. Clients speak the Engine.IO 4 / Socket.IO 5
text protocol on raw aiohttp WebSockets (1,000 full python-socketio clients would measure
the client library on this 2-core box, not the proxy). Prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from bench.harness import free_port, rss_mb, wait_port
from bench.serial import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent


async def client(session: aiohttp.ClientSession, url: str, token: str, until: float,
                 latencies: list[float], connected: list[int]) -> None:
    async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
        first = await ws.receive_str(timeout=15)
        assert first.startswith("0")
        await ws.send_str("40" + json.dumps({"token": token}))
        while time.time() < until:
            try:
                msg = await ws.receive_str(timeout=max(0.1, until - time.time()))
            except TimeoutError:
                break
            if msg == "2":
                await ws.send_str("3")
            elif msg.startswith("40"):
                connected.append(1)
            elif msg.startswith('42["score"'):
                sent = json.loads(msg[2:])[1]["ts"]
                latencies.append(time.time() - sent)


async def run(args: argparse.Namespace) -> dict[str, float]:
    up_port, port, admin = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "sio.yaml"
        config.write_text(yaml.safe_dump({
            "environment": "bench", "allow_inline_secrets": True, "listen": {"host": "127.0.0.1", "port": port},
            "admin": {"host": "127.0.0.1", "port": admin},
            "upstream": {"url": f"http://127.0.0.1:{up_port}"},
            "clerk": {"api_url": f"http://127.0.0.1:{args.clerk_port}", "secret_key": "sk_test_emulator"},
            "routes": [{"name": "socketio", "path": "/socket.io/**", "auth": "optional"}],
            "logging": {"level": "WARNING", "access_log": False},
            "websocket": {"compression": False},
        }))
        procs = [
            subprocess.Popen([sys.executable, "-m", "bench.sio_upstream", str(up_port), "1.0"], cwd=ROOT),
            subprocess.Popen([sys.executable, "-m", "proxy.process.cli", "run", "--config", str(config)],
                             cwd=ROOT, stderr=subprocess.DEVNULL, env=dict(os.environ)),
        ]
        try:
            wait_port(up_port)
            wait_port(port)
            proxy_pid = procs[1].pid
            latencies: list[float] = []
            connected: list[int] = []
            url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
            cpu0 = cpu_seconds(proxy_pid)
            until = time.time() + args.seconds
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as session:
                tasks = []
                for i in range(args.clients):
                    tasks.append(asyncio.create_task(client(session, url, args.token, until, latencies, connected)))
                    if i % 50 == 49:
                        await asyncio.sleep(0.05)  # a ramp, not a SYN flood
                results = await asyncio.gather(*tasks, return_exceptions=True)
            cpu = cpu_seconds(proxy_pid) - cpu0
            failures = sum(1 for r in results if isinstance(r, BaseException))
            rss = rss_mb(proxy_pid)
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else 0.0

    return {"clients": args.clients, "connected": len(connected), "failures": failures,
            "deliveries": len(latencies), "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
            "proxy_cpu_s": round(cpu, 2), "proxy_rss_mb": round(rss, 1), "seconds": args.seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--proxy-url", default="")
    parser.add_argument("--token", required=True)
    parser.add_argument("--upstream-port", type=int, default=0)
    parser.add_argument("--clerk-port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
