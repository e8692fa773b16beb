"""`make faults`: what partners, newcomers, strangers and revoked tokens get while the Clerk
emulator is down, slow, rate limiting, and during a flood of made-up tokens — through
real sockets: the proxy, the emulator and the upstream each a process of their own.

Phases, in order: warm, normal, down, recover, slow, recover, throttle (429 with
Retry-After), recover, flood (made-up tokens from many loopback source addresses, from
a child process). Known partners send steadily throughout; a few of them are revoked
early in `normal` and go on sending. Printed (and returned by `run`): per phase and kind
of caller, the statuses and latency percentiles; Clerk verify calls per second against
the normal rate; the flood's Clerk calls against the budget's bound; each revoked
token's time from revocation to its first refusal. `--short` is the version
tests/test_faults.py runs in `make test` (seconds instead of minutes, no timing claims).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.faultload import Connection, Record, paced, stranger
from bench.harness import PY, ROOT, free_port, post_json, wait_port

EMULATOR_KEY = "sk_test_emulator"


@dataclass(frozen=True)
class Scenario:
    partners: int = 50
    partner_rate: float = 6.0  # requests per second each: 300 in all
    revoked: int = 5
    newcomer_every: float = 2.0
    stranger_rate: float = 2.0
    ttl: float = 10.0
    stale: float = 120.0
    miss_deadline: float = 1.0
    clerk_timeout: float = 8.0
    warm: float = 10.0
    normal: float = 30.0
    fault: float = 60.0
    recover: float = 15.0
    slow_seconds: float = 5.0
    retry_after: int = 2
    flood_requests: int = 100_000
    flood_addresses: int = 1000
    flood_concurrency: int = 200
    budget_rate: float = 50.0
    budget_burst: int = 200
    reserved: float = 0.25


FULL = Scenario()
SHORT = Scenario(partners=10, partner_rate=10.0, revoked=2, newcomer_every=0.5, ttl=2.0,
                 stale=30.0, miss_deadline=0.3, clerk_timeout=3.0, warm=2.0, normal=3.0,
                 fault=3.0, recover=2.5, slow_seconds=1.5, retry_after=1, flood_requests=3000,
                 flood_addresses=50, flood_concurrency=50)


def proxy_config(tmp: Path, sc: Scenario, port: int, admin: int, up: int, clerk: int) -> Path:
    raw = {
        "environment": "faults",
        "allow_inline_secrets": True,  # the emulator's key
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "upstream": {"url": f"http://127.0.0.1:{up}", "readiness_path": "/healthz"},
        "clerk": {"api_url": f"http://127.0.0.1:{clerk}", "secret_key": EMULATOR_KEY,
                  "timeout": sc.clerk_timeout, "miss_deadline": sc.miss_deadline},
        "cache": {"ttl_seconds": sc.ttl, "stale_if_error_seconds": sc.stale},
        "verification_budget": {"global": {"rate": sc.budget_rate, "burst": sc.budget_burst},
                                "reserved_for_known": sc.reserved},
        "routes": [{"name": "api", "path": "/api/**", "auth": "required"}],
        "logging": {"level": "WARNING", "access_log": False},
    }
    path = tmp / "proxy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Run:
    def __init__(self, sc: Scenario, port: int, clerk: str) -> None:
        self.sc, self.port, self.clerk = sc, port, clerk
        self.phase = "warm"
        self.known, self.revoked, self.newcomers, self.strangers = (Record(), Record(), Record(), Record())
        self.revoked_at: dict[int, float] = {}
        self.first_refusal: dict[int, float] = {}
        self.revoked_grace, self.newcomer_firsts = Record(), Record()
        # Clerk's verify count at the start and the end of each phase.
        self.counts: dict[str, tuple[int, int]] = {}
        self.windows: dict[str, tuple[float, float]] = {}
        self.flood: dict[str, Any] = {}

    async def control(self, path: str, body: dict[str, Any] | None, method: str = "POST") -> Any:
        """The emulator's control routes (not Clerk's; faults never touch them)."""
        if method == "POST":
            return await asyncio.to_thread(post_json, f"{self.clerk}{path}", body or {})
        return await asyncio.to_thread(_get_json, f"{self.clerk}{path}", method)

    async def partner(self, i: int, token: str, until: float) -> None:
        conn = Connection(self.port)

        async def step() -> None:
            answer = await conn.get("/api/partner", token)
            now = time.monotonic()
            if i in self.revoked_at and now >= self.revoked_at[i]:
                if i in self.first_refusal:
                    self.revoked.add(self.phase, answer)  # once refused, always refused
                elif answer.status == 401:
                    self.first_refusal[i] = now
                    self.revoked.add(self.phase, answer)
                else:
                    self.revoked_grace.add(self.phase, answer)  # revoked, not yet refused
            else:
                self.known.add(self.phase, answer)

        await paced(self.sc.partner_rate, until, step)
        conn.close()

    async def newcomers_loop(self, machine: str, until: float) -> None:
        async def one() -> None:
            issued = await self.control("/__emulator/m2m_tokens",
                                        {"machine_id": machine, "seconds_until_expiration": 3600})
            conn, phase = Connection(self.port), self.phase
            answer = await conn.get("/api/new", issued["secret"])
            self.newcomer_firsts.add(phase, answer)
            # A well-behaved client retries after Retry-After until it gets in.
            deadline = time.monotonic() + 30
            while answer.status in (429, 503) and time.monotonic() < deadline and time.monotonic() < until:
                await asyncio.sleep(answer.retry_after or 1)
                answer = await conn.get("/api/new", issued["secret"])
            self.newcomers.add(phase, answer)
            conn.close()

        tasks: list[asyncio.Task[None]] = []

        async def start() -> None:
            tasks.append(asyncio.ensure_future(one()))

        await paced(1 / self.sc.newcomer_every, until, start)
        await asyncio.gather(*tasks)

    async def strangers_loop(self, until: float) -> None:
        conn = Connection(self.port)

        async def step() -> None:
            self.strangers.add(self.phase, await conn.get("/api/stranger", stranger()))

        await paced(self.sc.stranger_rate, until, step)
        conn.close()

    async def verify_calls(self) -> int:
        calls = await self.control("/__emulator/calls", None, "GET")
        return int(calls.get("m2m_verify", 0))

    def calls_in(self, phase: str) -> tuple[int, float]:
        (start, end), (first, last) = self.windows[phase], self.counts[phase]
        return last - first, end - start


def _get_json(url: str, method: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as resp:
        return json.loads(resp.read())


async def drive(run: Run, partners: list[dict[str, Any]], machine: str, proxy_port: int) -> None:
    sc = run.sc
    total = sc.warm + sc.normal + 3 * (sc.fault + sc.recover) + 600
    until = time.monotonic() + total
    loops = [asyncio.ensure_future(run.partner(i, p["secret"], until)) for i, p in enumerate(partners)]
    loops += [asyncio.ensure_future(run.newcomers_loop(machine, until)),
              asyncio.ensure_future(run.strangers_loop(until))]

    async def begin(name: str, fault: dict[str, Any] | None = None) -> tuple[float, int]:
        if fault is not None:
            await run.control("/__emulator/faults", fault)
        run.phase = name
        return time.monotonic(), await run.verify_calls()

    async def end(name: str, began: tuple[float, int], fault: bool = False) -> None:
        run.counts[name] = (began[1], await run.verify_calls())
        run.windows[name] = (began[0], time.monotonic())
        if fault:
            await run.control("/__emulator/faults", None, "DELETE")

    async def phase(name: str, seconds: float, fault: dict[str, Any] | None = None) -> None:
        began = await begin(name, fault)
        await asyncio.sleep(seconds)
        await end(name, began, fault is not None)

    await phase("warm", sc.warm)
    began = await begin("normal")
    await asyncio.sleep(min(2.0, sc.normal / 3))
    for i, p in enumerate(partners[: sc.revoked]):
        await asyncio.to_thread(_revoke, run.clerk, p["id"])
        run.revoked_at[i] = time.monotonic()
    await asyncio.sleep(max(0.0, sc.normal - (time.monotonic() - began[0])))
    await end("normal", began)
    await phase("down", sc.fault, {"kind": "down"})
    await phase("recover_down", sc.recover)
    await phase("slow", sc.fault, {"kind": "slow", "seconds": sc.slow_seconds})
    await phase("recover_slow", sc.recover)
    await phase("throttle", sc.fault, {"kind": "rate_limit", "retry_after": sc.retry_after})
    await phase("recover_throttle", sc.recover)
    began = await begin("flood")
    out = await asyncio.to_thread(subprocess.run, [
        PY, "-m", "bench.faultload", "flood", str(proxy_port), str(sc.flood_requests),
        str(sc.flood_addresses), str(sc.flood_concurrency)], cwd=ROOT, capture_output=True,
        text=True, check=True, timeout=900)
    await end("flood", began)
    run.flood = json.loads(out.stdout.strip().splitlines()[-1])
    run.phase = "done"
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)


def _verification_metrics(admin: int) -> dict[str, float]:
    """The proxy's own counters of what it did (background checks, held calls, ...)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = ("authproxy_verify_", "authproxy_clerk_calls_held", "authproxy_verification_",
              "authproxy_clerk_requests_total")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(wanted)}


def _revoke(clerk: str, token_id: str) -> None:
    import urllib.request

    req = urllib.request.Request(f"{clerk}/m2m_tokens/{token_id}/revoke", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {EMULATOR_KEY}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):
        pass


def summarize(run: Run) -> dict[str, Any]:
    sc = run.sc
    phases = ["normal", "down", "recover_down", "slow", "recover_slow", "throttle",
              "recover_throttle", "flood"]
    base_p99 = pct(run.known.latencies.get("normal", []), 0.99)
    out: dict[str, Any] = {"scenario": sc.__dict__, "phases": {}}
    normal_calls, normal_seconds = run.calls_in("normal")
    normal_rate = normal_calls / normal_seconds
    for name in phases:
        lat = run.known.latencies.get(name, [])
        calls, seconds = run.calls_in(name)
        known = run.known.statuses.get(name, {})
        out["phases"][name] = {
            "seconds": round(seconds, 1),
            "known": {"requests": sum(known.values()), "statuses": dict(known),
                      "ok_share": round(known.get(200, 0) / max(1, sum(known.values())), 5),
                      "p50_ms": round(pct(lat, 0.5) * 1000, 2), "p99_ms": round(pct(lat, 0.99) * 1000, 2),
                      "max_ms": round(max(lat, default=float("nan")) * 1000, 2),
                      "added_p99_ms": round((pct(lat, 0.99) - base_p99) * 1000, 2)},
            "revoked": dict(run.revoked.statuses.get(name, {})),
            "revoked_before_refusal": dict(run.revoked_grace.statuses.get(name, {})),
            "newcomers_first_answer": dict(run.newcomer_firsts.statuses.get(name, {})),
            "newcomers_in_the_end": dict(run.newcomers.statuses.get(name, {})),
            "strangers": dict(run.strangers.statuses.get(name, {})),
            "clerk_calls": calls,
            "clerk_calls_per_second": round(calls / seconds, 2) if seconds else 0.0,
        }
    out["normal_clerk_calls_per_second"] = round(normal_rate, 2)
    flood_calls, flood_seconds = run.calls_in("flood")
    out["flood"] = {**run.flood, "clerk_calls": flood_calls,
                    "budget_bound": round(sc.budget_burst + sc.budget_rate * flood_seconds),
                    "unknown_bound": round((1 - sc.reserved) * sc.budget_burst + sc.budget_rate * flood_seconds)}
    # None: never refused (a failure of the guarantee).
    out["revocation_seconds"] = [
        round(run.first_refusal[i] - run.revoked_at[i], 2) if i in run.first_refusal else None
        for i in sorted(run.revoked_at)]
    return out


async def run(sc: Scenario) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clerk-faults-") as tmp:
        procs: list[subprocess.Popen[bytes]] = []

        def spawn(*cmd: str) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
            procs.append(proc)
            return proc

        try:
            up, clerk_port, port, admin = free_port(), free_port(), free_port(), free_port()
            spawn(PY, "-m", "bench.upstream", str(up))
            emulator = spawn(PY, "-m", "proxy.process.cli", "emulate-clerk", "--port", str(clerk_port))
            assert emulator.stdout is not None
            await asyncio.to_thread(emulator.stdout.readline)
            await asyncio.to_thread(wait_port, up)
            config = proxy_config(Path(tmp), sc, port, admin, up, clerk_port)
            proxy = subprocess.Popen([PY, "-m", "proxy.process.cli", "run", "--config", str(config)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proxy)
            await asyncio.to_thread(wait_port, port, 60)
            clerk = f"http://127.0.0.1:{clerk_port}"
            machine = (await asyncio.to_thread(post_json, f"{clerk}/__emulator/machines",
                                               {"name": "partner"}))["id"]
            partners = [await asyncio.to_thread(post_json, f"{clerk}/__emulator/m2m_tokens",
                                                {"machine_id": machine, "seconds_until_expiration": 3600})
                        for _ in range(sc.partners)]
            r = Run(sc, port, clerk)
            await drive(r, partners, machine, port)
            result = summarize(r)
            result["proxy_metrics"] = await asyncio.to_thread(_verification_metrics, admin)
            return result
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def report(result: dict[str, Any]) -> str:
    lines = ["phase | known 200 share | known p50 / p99 ms (added p99) | Clerk calls/s | revoked | newcomers (first → last) | strangers",
             "---|---|---|---|---|---|---"]
    for name, p in result["phases"].items():
        k = p["known"]
        lines.append(f"{name} | {k['ok_share']:.4%} of {k['requests']} | {k['p50_ms']} / {k['p99_ms']} "
                     f"({k['added_p99_ms']:+}) | {p['clerk_calls_per_second']} | {p['revoked']} | "
                     f"{p['newcomers_first_answer']} → {p['newcomers_in_the_end']} | {p['strangers']}")
    f = result["flood"]
    lines += ["", f"normal Clerk calls/s: {result['normal_clerk_calls_per_second']}",
              f"flood: {f['statuses']} in {f['seconds']} s; Clerk calls {f['clerk_calls']} "
              f"(budget bound {f['budget_bound']}, unknown tokens' share {f['unknown_bound']})",
              f"revoked tokens, seconds from revocation to first 401 (TTL {result['scenario']['ttl']} s): "
              f"{result['revocation_seconds']}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="the make test version: seconds, not minutes")
    args = parser.parse_args()
    result = asyncio.run(run(SHORT if args.short else FULL))
    print(report(result))
    out = ROOT / "bench" / "results" / "faults-latest.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n(written to {out.relative_to(ROOT)}; median known p99 across fault phases: "
          f"{statistics.median(p['known']['p99_ms'] for p in result['phases'].values())} ms)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
