"""The shared level measured: 4 proxy processes on one Redis (Debian's redis-server), the
Clerk emulator as Clerk, everything on loopback. Prints one JSON object.

Legs:
- cost: 100 tokens picked Zipf(1.0), 1,000 req/s open loop spread over the 4 processes,
  TTL `--ttl` s, for `--seconds` s; once with `cache.shared`, once without. Reported:
  Clerk calls, and calls per token per TTL = calls / the calls one cache seeing every
  request would make (a replay of the same request times through a TTL cache): 1.0 is
  "one call per token per TTL for the whole cluster".
- herd: a cold token, 400 concurrent requests spread over the 4: Clerk calls.
- l2_hit: `--samples` tokens verified by process A, then asked of process B one after
  another (second-level hits), then again (first-level hits): p50/p90 of each and B's
  CPU per request, with B and Redis on different CPUs (Redis's own machine, in
  production); l2_hit_unpinned: the same as the scheduler places them;
  l2_hit_after_idle: a 2 ms pause before each measured request (a cold process);
  l2_hit_in_process: the verifier alone, without HTTP.
- revocation: `--revocations` times, a token cached on all 4 is revoked through process
  0's admin port; each process is polled every 2 ms until it refuses; the delay from the
  POST to each refusal, p50/p99/max over all processes and revocations.

    python -m bench.cluster [--seconds 20] [--ttl 5] [--revocations 100] [--only-l2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.harness import free_port, wait_port

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk_test_emulator"
REVOKE_SECRET = "bench-revocation-secret-0123"
NODES = 4


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *cmd: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def close(self) -> None:
        self.stop(list(reversed(self.procs)))


def proxy_config(
    tmp: Path, name: str, up: int, clerk: int, redis: int | None, ttl: float,
    refresh_ahead: float | None = None,
) -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    cache: dict[str, Any] = {"ttl_seconds": ttl}
    if refresh_ahead is not None:
        cache["refresh_ahead"] = refresh_ahead
    if redis is not None:
        cache["shared"] = {"url": f"redis://127.0.0.1:{redis}", "timeout": "50ms"}
    raw = {
        "environment": "bench",
        "allow_inline_secrets": True,  # the emulator's key
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "upstream": {"url": f"http://127.0.0.1:{up}"},
        "clerk": {"api_url": f"http://127.0.0.1:{clerk}", "secret_key": SECRET},
        "cache": cache,
        "verification_budget": {"enabled": False},
        "revocation": {"secret": REVOKE_SECRET},
        "routes": [{"name": "api", "path": "/api/**", "auth": "required"}],
        "logging": {"level": "WARNING"},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, port, admin


async def post(s: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str) -> Any:
    async with s.post(url, json=body, headers=headers) as resp:
        return await resp.json()


async def calls(s: aiohttp.ClientSession, clerk: int) -> int:
    async with s.get(f"http://127.0.0.1:{clerk}/__emulator/calls") as resp:
        return int((await resp.json()).get("m2m_verify", 0))


async def new_token(s: aiohttp.ClientSession, clerk: int, machine: str) -> dict[str, Any]:
    return dict(await post(s, f"http://127.0.0.1:{clerk}/__emulator/m2m_tokens", {"machine_id": machine}))


async def get(s: aiohttp.ClientSession, port: int, token: str) -> int:
    async with s.get(f"http://127.0.0.1:{port}/api/x", headers={"Authorization": f"Bearer {token}"}) as resp:
        await resp.read()
        return resp.status


async def shared_counts(admins: list[int]) -> dict[str, float]:
    """The shared level's lookups and flights, summed over the processes."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as s:
        for admin in admins:
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as resp:
                text = await resp.text()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in (
                        "authproxy_shared_cache_lookups_total",
                        "authproxy_shared_cache_flights_total",
                        "authproxy_shared_cache_errors_total",
                    ):
                        label = ",".join(sample.labels.values())
                        name = sample.name.removeprefix("authproxy_shared_cache_").removesuffix("_total")
                        out[f"{name}:{label}"] = out.get(f"{name}:{label}", 0) + sample.value
    return out


def single_cache_calls(times: list[tuple[float, int]], ttl: float) -> int:
    """Calls one cache would make for these (time, token) requests: one per TTL epoch."""
    until: dict[int, float] = {}
    n = 0
    for t, token in times:
        if until.get(token, -1.0) <= t:
            until[token] = t + ttl
            n += 1
    return n


async def cost_leg(ports: list[int], clerk: int, machine: str, seconds: float, ttl: float, rate: float) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as s:
        tokens = [(await new_token(s, clerk, machine))["secret"] for _ in range(100)]
        weights = [1 / k for k in range(1, 101)]
        rng = random.Random(20)
        before = await calls(s, clerk)
        sent: list[tuple[float, int]] = []
        statuses: dict[int, int] = {}
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, port: int) -> None:
            status = await get(s, port, tokens[i])
            statuses[status] = statuses.get(status, 0) + 1

        n = 0
        while True:
            due = start + n / rate
            now = time.monotonic()
            if due - start >= seconds:
                break
            if due > now:
                await asyncio.sleep(due - now)
            i = rng.choices(range(100), weights)[0]
            sent.append((time.monotonic() - start, i))
            task = asyncio.create_task(one(i, ports[n % len(ports)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)
        made = await calls(s, clerk) - before
        ideal = single_cache_calls(sent, ttl)
        return {
            "requests": n,
            "achieved_rps": round(n / (time.monotonic() - start), 1),
            "statuses": statuses,
            "clerk_calls": made,
            "one_cache_calls": ideal,
            "calls_per_token_per_ttl": round(made / ideal, 2),
        }


async def herd_leg(ports: list[int], clerk: int, machine: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as s:
        token = (await new_token(s, clerk, machine))["secret"]
        before = await calls(s, clerk)
        statuses = await asyncio.gather(*(get(s, ports[n % len(ports)], token) for n in range(400)))
        return {"requests": 400, "ok": statuses.count(200), "clerk_calls": await calls(s, clerk) - before}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def series(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p90_ms": round(pct(latencies, 0.9) * 1000, 3),
    }


@contextlib.contextmanager
def apart(pid: int, other: int | None) -> Iterator[bool]:
    """Pin `pid` and `other` (Redis) to different CPUs for a while; whether it did.

    In production Redis runs on another machine; on this 2-core box the scheduler
    otherwise alternates between running both on one core and on two, and a quarter of
    the second-level hits (in runs of hundreds) pay for the same-core switches."""
    cpus = sorted(os.sched_getaffinity(0))
    if other is None or len(cpus) < 2:
        yield False
        return
    os.sched_setaffinity(pid, {cpus[0]})
    os.sched_setaffinity(other, {cpus[-1]})
    try:
        yield True
    finally:
        os.sched_setaffinity(pid, set(cpus))
        os.sched_setaffinity(other, set(cpus))


async def l2_leg(
    ports: list[int], admins: list[int], clerk: int, machine: str, samples: int, pid: int,
    redis: int | None = None,
) -> dict[str, Any]:
    """Process A verifies `samples` tokens; process B (`pid`) is then asked for each one
    after another — second-level hits —, then for each again — first-level hits. Both
    series run the same way on a process kept busy, as a pod serving traffic is: p50/p90
    of each, and B's CPU per request; with `redis` (its pid), B and Redis on different
    CPUs (`apart`)."""
    with apart(pid, redis) as pinned:
        return await _l2_series(ports, admins, clerk, machine, samples, pid) | {"pinned_apart": pinned}


async def _l2_series(
    ports: list[int], admins: list[int], clerk: int, machine: str, samples: int, pid: int
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        tokens = [(await new_token(s, clerk, machine))["secret"] for _ in range(samples)]
        for token in tokens:
            assert await get(s, ports[0], token) == 200  # verified by A, written to Redis
        await asyncio.sleep(0.5)  # A's writes land (they run after A answered)
        out: dict[str, Any] = {"samples": samples}
        for level in ("l2", "l1"):
            before = await shared_counts(admins[1:2])
            latencies: list[float] = []
            cpu = cpu_seconds(pid)
            for token in tokens:
                t = time.perf_counter()
                assert await get(s, ports[1], token) == 200
                latencies.append(time.perf_counter() - t)
            used = cpu_seconds(pid) - cpu
            after = await shared_counts(admins[1:2])
            lookups = {k: after[k] - before.get(k, 0.0) for k in after if k.startswith("lookups:")}
            # Checked, not assumed: every request of the first series was a second-level
            # hit, and none of the second asked Redis.
            out[level] = {**series(latencies), "cpu_us_per_request": round(used / samples * 1e6, 1),
                          "shared_lookups": {k: v for k, v in lookups.items() if v}}
    out["added_p50_ms"] = round(out["l2"]["p50_ms"] - out["l1"]["p50_ms"], 3)
    out["added_p90_ms"] = round(out["l2"]["p90_ms"] - out["l1"]["p90_ms"], 3)
    return out


async def l2_after_idle_leg(
    ports: list[int], clerk: int, machine: str, samples: int, pid: int, redis: int
) -> dict[str, Any]:
    """The same comparison with every measured request coming to a process idle for 2 ms
    (A verifies, a pause, then B), B and Redis apart: what a rarely used pod sees,
    dominated on a shared 2-core machine by waking processes and cold caches."""
    l2: list[float] = []
    l1: list[float] = []
    with apart(pid, redis):
        await _idle_series(ports, clerk, machine, samples, l2, l1)
    return {
        "samples": samples,
        "l2": series(l2),
        "l1": series(l1),
        "added_p90_ms": round((pct(l2, 0.9) - pct(l1, 0.9)) * 1000, 3),
    }


async def _idle_series(
    ports: list[int], clerk: int, machine: str, samples: int, l2: list[float], l1: list[float]
) -> None:
    async with aiohttp.ClientSession() as s:
        other = (await new_token(s, clerk, machine))["secret"]
        assert await get(s, ports[1], other) == 200
        for _ in range(samples):
            token = (await new_token(s, clerk, machine))["secret"]
            assert await get(s, ports[0], token) == 200
            for into in (l2, l1):  # a second-level hit, then a first-level one
                await asyncio.sleep(0.002)
                assert await get(s, ports[1], other) == 200  # the connection's memo moves away
                t = time.perf_counter()
                assert await get(s, ports[1], token) == 200
                into.append(time.perf_counter() - t)


async def l2_in_process_leg(redis: int, clerk: int, machine: str, samples: int) -> dict[str, Any]:
    """The verifier's own cost of a second-level hit over a first-level hit, without the
    HTTP hops: two verifiers (two caches) on one Redis; A verifies, B's `verify` is the
    second-level hit, B's `cached` after it the first-level hit."""
    from proxy.auth.verifier import ClerkVerifier
    from proxy.config.load import build_config
    from proxy.observe.metrics import Metrics

    raw = {
        "upstream": {"url": "http://127.0.0.1:1"},
        "clerk": {"api_url": f"http://127.0.0.1:{clerk}", "secret_key": SECRET},
        "cache": {"shared": {"url": f"redis://127.0.0.1:{redis}", "timeout": "50ms"}},
        "verification_budget": {"enabled": False},
    }
    config = build_config(raw, file="bench.yaml")
    l1: list[float] = []
    l2: list[float] = []
    async with aiohttp.ClientSession() as s:
        a, b = ClerkVerifier(config, s, Metrics()), ClerkVerifier(config, s, Metrics())
        await a.start()
        await b.start()
        tokens = [(await new_token(s, clerk, machine))["secret"] for _ in range(samples)]
        for token in tokens:
            await a.verify(token, "127.0.0.1")
        await asyncio.sleep(0.2)  # A's writes land
        for token in tokens:
            t = time.perf_counter()
            await b.verify(token, "127.0.0.1")
            l2.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert b.cached(token) is not None
            l1.append(time.perf_counter() - t)
        await a.close()
        await b.close()
    ms = 1000.0
    return {
        "samples": samples,
        "l1_hit_p90_ms": round(pct(l1, 0.9) * ms, 4),
        "l2_hit_p50_ms": round(statistics.median(l2) * ms, 3),
        "l2_hit_p90_ms": round(pct(l2, 0.9) * ms, 3),
        "added_p90_ms": round((pct(l2, 0.9) - pct(l1, 0.9)) * ms, 3),
    }


async def revocation_leg(ports: list[int], admins: list[int], clerk: int, machine: str, count: int) -> dict[str, Any]:
    delays: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:
        for _ in range(count):
            issued = await new_token(s, clerk, machine)
            for port in ports:
                assert await get(s, port, issued["secret"]) == 200
            started = time.perf_counter()
            answer = await post(
                s, f"http://127.0.0.1:{admins[0]}/revoke", {"token_id": issued["id"]},
                Authorization=f"Bearer {REVOKE_SECRET}",
            )
            assert answer.get("propagated"), answer

            async def refused(port: int, token: str = issued["secret"], t0: float = started) -> float:
                while True:
                    if await get(s, port, token) == 401:
                        return time.perf_counter() - t0
                    await asyncio.sleep(0.002)

            delays += await asyncio.gather(*(refused(p) for p in ports))
    return {
        "revocations": count,
        "samples": len(delays),
        "p50_ms": round(statistics.median(delays) * 1000, 2),
        "p99_ms": round(pct(delays, 0.99) * 1000, 2),
        "max_ms": round(max(delays) * 1000, 2),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("bench.cluster needs redis-server (apt-get install redis-server)")
    results: dict[str, Any] = {"nodes": NODES, "ttl_seconds": args.ttl, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="clerk-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        fleet = Fleet(tmp)
        try:
            redis_port, up, clerk = free_port(), free_port(), free_port()
            redis = fleet.spawn(redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(tmp))
            fleet.spawn(PY, "-m", "bench.upstream", str(up))
            emulator = fleet.spawn(PY, "-m", "proxy.process.cli", "emulate-clerk", "--port", str(clerk),
                                   "--secret-key", SECRET)
            assert emulator.stdout is not None
            emulator.stdout.readline()
            for port in (redis_port, up, clerk):
                wait_port(port)
            async with aiohttp.ClientSession() as s:
                machine = (await post(s, f"http://127.0.0.1:{clerk}/__emulator/machines", {"name": "partner"}))["id"]
            for shared in (True,) if args.only_l2 else (True, False):
                nodes = [proxy_config(tmp, f"{'shared' if shared else 'alone'}{n}", up, clerk,
                                      redis_port if shared else None, args.ttl, args.refresh_ahead)
                         for n in range(NODES)]
                procs = [fleet.spawn(PY, "-m", "proxy.process.cli", "run", "--config", str(c)) for c, _, _ in nodes]
                ports, admins = [p for _, p, _ in nodes], [a for _, _, a in nodes]
                for port in ports:
                    wait_port(port)
                name = "shared" if shared else "per_process"
                if args.only_l2:
                    results["l2_hit"] = await l2_leg(ports, admins, clerk, machine, args.samples, procs[1].pid, redis=redis.pid)
                    results["l2_hit_unpinned"] = await l2_leg(ports, admins, clerk, machine, args.samples, procs[1].pid)
                    results["l2_hit_after_idle"] = await l2_after_idle_leg(ports, clerk, machine, 300, procs[1].pid, redis.pid)
                    results["l2_hit_in_process"] = await l2_in_process_leg(redis_port, clerk, machine, args.samples)
                    fleet.stop(procs)
                    break
                results[f"cost_{name}"] = await cost_leg(ports, clerk, machine, args.seconds, args.ttl, args.rate)
                if shared:
                    results["cost_shared"]["shared_level"] = await shared_counts(admins)
                print(f"cost_{name}: {json.dumps(results[f'cost_{name}'])}", file=sys.stderr, flush=True)
                results[f"herd_{name}"] = await herd_leg(ports, clerk, machine)
                if shared:
                    results["herd_shared"]["shared_level_after"] = await shared_counts(admins)
                if shared:
                    results["l2_hit"] = await l2_leg(ports, admins, clerk, machine, args.samples, procs[1].pid, redis=redis.pid)
                    results["l2_hit_unpinned"] = await l2_leg(ports, admins, clerk, machine, args.samples, procs[1].pid)
                    results["l2_hit_after_idle"] = await l2_after_idle_leg(ports, clerk, machine, 300, procs[1].pid, redis.pid)
                    results["l2_hit_in_process"] = await l2_in_process_leg(redis_port, clerk, machine, args.samples)
                    results["revocation"] = await revocation_leg(ports, admins, clerk, machine, args.revocations)
                fleet.stop(procs)
        finally:
            fleet.close()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--ttl", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--revocations", type=int, default=100)
    p.add_argument("--only-l2", action="store_true", help="only the second-level hit legs")
    # Refresh ahead (issue 18) re-checks a busy token at 80-90 % of its TTL, on purpose more
    # often than once a TTL: `--refresh-ahead 0` shows what the shared level alone costs.
    p.add_argument("--refresh-ahead", type=float, default=None,
                   help="cache.refresh_ahead for every proxy (default: the config's default)")
    args = p.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    print(json.dumps(asyncio.run(measure(args))))


if __name__ == "__main__":
    main()
