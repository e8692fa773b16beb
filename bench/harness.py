"""`make bench`: direct vs nginx vs clerk-auth-proxy, side by side in one run.

Legs: (a) direct to the upstream; (b) nginx proxy_pass; (c) the proxy on a public route;
(d) the proxy on a required route with a cached opaque M2M token; (e) the same with a
session JWT; (f) Socket.IO fan-out (bench/sio_fanout.py). For each HTTP leg: saturation
throughput (wrk) and latency at a fixed offered load (bench/openloop.py, open loop),
CPU seconds per 1,000 requests and RSS of the process under test. Results go to
bench/results/ and the table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from bench.serial import SEQ, TRACE, cpu_split

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_pids(pid: int) -> list[int]:
    """The process and its children (nginx: master + worker)."""
    out = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out += tree_pids(int(child))
    return out


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="clerk-bench-") as tmp:
        s = Stack(Path(tmp))
        try:
            yield s
        finally:
            s.close()


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location /static {{ return 200 '{{"ok":true}}'; }}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    # (b3): the same, writing an access line a request as the proxy does (batched, and
    # to where the proxy's go in the bench: nowhere).
    server {{
        listen 127.0.0.1:{logged_port};
        access_log /dev/null combined buffer=64k flush=1s;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def proxy_config(
    tmp: Path, upstream: int, clerk: int, port: int, admin: int, issuer: str = "",
    *, fast_path: bool = True, name: str = "proxy.yaml",
) -> Path:
    raw = {
        "environment": "bench",
        "allow_inline_secrets": True,  # the emulator's key
        "listen": {"host": "127.0.0.1", "port": port, "fast_path": fast_path},
        "admin": {"host": "127.0.0.1", "port": admin},
        "upstream": {"url": f"http://127.0.0.1:{upstream}", "readiness_path": "/healthz"},
        "clerk": {"api_url": f"http://127.0.0.1:{clerk}", "secret_key": "sk_test_emulator",
                  "instance": "bench-emulator"},
        "cache": {"ttl_seconds": 600},
        "routes": [
            {"name": "public", "path": "/public/**", "auth": "public"},
            {"name": "api", "path": "/api/**", "auth": "required"},
        ],
        "logging": {"level": "INFO", "access_log": True},
    }
    if issuer:  # leg (g): another OAuth issuer (the issuer emulator, Authgear's tokens)
        raw["issuers"] = [{"name": "bench-issuer", "preset": "authgear", "issuer": issuer,
                           "audiences": [ISSUER_RESOURCE]}]
    path = tmp / name
    path.write_text(yaml.safe_dump(raw))
    return path


ISSUER_RESOURCE = "https://api.scores.example"
# A traced partner's own fields, new on every request.
TRACED = {"X-Request-Id": SEQ, "traceparent": TRACE}


def client_credentials_token(seeded: dict[str, Any]) -> str:
    """A token from the issuer emulator's token endpoint, as a partner gets one."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "resource": seeded["resource"],
                                   "client_id": seeded["client_id"],
                                   "client_secret": seeded["client_secret"]}).encode()
    req = urllib.request.Request(seeded["token_endpoint"], data=form)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["access_token"])


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


# wrk numbers the headers whose value is `{seq}` or `{trace}` (bench.serial.SEQ, TRACE)
# on every request.
WRK_SEQ = """
local n = 0
request = function()
  n = n + 1
  local h = {}
  for k, v in pairs(wrk.headers) do
    if v == "SEQ" then
      h[k] = string.format("%016x", n)
    elseif v == "TRACE" then
      h[k] = string.format("00-%032x-%016x-01", n, n)
    else
      h[k] = v
    end
  end
  return wrk.format(nil, nil, h)
end
""".replace("SEQ", SEQ).replace("TRACE", TRACE)


def wrk(url: str, headers: dict[str, str], seconds: int, connections: int) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if SEQ in headers.values() or TRACE in headers.values():
        script = Path(tempfile.gettempdir()) / "clerk-bench-seq.lua"
        script.write_text(WRK_SEQ)
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result = {"rps": rps}
    for pct in ("50", "90", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if m:
            result[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    return result


def openloop(url: str, headers: dict[str, str], rate: float, seconds: float,
             pids: list[int]) -> dict[str, float]:
    before = [cpu_split(p) for p in pids]
    out = subprocess.run(
        [PY, "-m", "bench.openloop", url, str(rate), str(seconds), json.dumps(headers)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout
    after = [cpu_split(p) for p in pids]
    user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    per_1k = 1000 / max(1.0, result["ok"])
    result["cpu_s_per_1k"] = (user + system) * per_1k
    # The split says whose the time is: the proxy's own code (user) or the kernel's
    # socket work it asks for (system), which no Python change makes cheaper.
    result["cpu_user_s_per_1k"] = user * per_1k
    result["cpu_sys_s_per_1k"] = system * per_1k
    result["rss_mb"] = sum(rss_mb(p) for p in pids)
    return result


def serial(port: int, pid: int, url: str, headers: dict[str, str], seconds: float) -> dict[str, float]:
    path = "/" + url.split("/", 3)[3]
    out = subprocess.run(
        [PY, "-m", "bench.serial", str(port), str(pid), str(seconds), path, json.dumps(headers)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "nproc": os.cpu_count(), "cpu": model}


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "legs": {}, "settings": vars(args)}
    # Wall-clock seconds of each phase: `make bench` must stay under ten minutes.
    phases: dict[str, float] = results.setdefault("phase_seconds", {})
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = round(now - mark, 1)
        mark = now

    with stack() as s:
        up_port, nginx_port, clerk_port, relay_port = free_port(), free_port(), free_port(), free_port()
        logged_port = free_port()
        issuer_port = free_port()
        proxy_port, admin_port = free_port(), free_port()
        upstream = s.spawn(PY, "-m", "bench.upstream", str(up_port))
        (s.tmp / "nginx.conf").write_text(NGINX_CONF.format(
            tmp=s.tmp, upstream=up_port, port=nginx_port, logged_port=logged_port))
        nginx = s.spawn(shutil.which("nginx") or "nginx", "-c", str(s.tmp / "nginx.conf"), "-p", str(s.tmp))
        relay = s.spawn(PY, "-m", "bench.relay", str(relay_port), str(up_port))
        emulator = s.spawn(PY, "-m", "proxy.process.cli", "emulate-clerk", "--port", str(clerk_port))
        assert emulator.stdout is not None
        seeded = json.loads(emulator.stdout.readline())
        issuer_emu = s.spawn(PY, "-m", "proxy.process.cli", "emulate-issuer", "--port", str(issuer_port))
        assert issuer_emu.stdout is not None
        issuer_seeded = json.loads(issuer_emu.stdout.readline())
        for port in (up_port, nginx_port, clerk_port, relay_port):
            wait_port(port)
        session_jwt = post_json(f"http://127.0.0.1:{clerk_port}/__emulator/session_tokens",
                                {"user_id": "user_bench", "expires_in": 3600})["token"]
        issuer_jwt = client_credentials_token(issuer_seeded)
        config = proxy_config(s.tmp, up_port, clerk_port, proxy_port, admin_port,
                              issuer_seeded["issuer"])
        proxy = s.spawn(PY, "-m", "proxy.process.cli", "run", "--config", str(config))
        # The same proxy with `listen.fast_path: false`: every request through aiohttp's
        # door, the path any request the fast path declines takes (leg t2).
        door_port, door_admin = free_port(), free_port()
        door_config = proxy_config(s.tmp, up_port, clerk_port, door_port, door_admin,
                                   issuer_seeded["issuer"], fast_path=False,
                                   name="proxy-aiohttp.yaml")
        door = s.spawn(PY, "-m", "proxy.process.cli", "run", "--config", str(door_config))
        wait_port(proxy_port)
        wait_port(door_port)

        phase("start")
        m2m = {"Authorization": f"Bearer {seeded['m2m_token_secret']}"}
        jwt = {"Authorization": f"Bearer {session_jwt}"}
        legs = {
            "a_direct": (f"http://127.0.0.1:{up_port}/api/x", {}, [upstream.pid]),
            "b_nginx": (f"http://127.0.0.1:{nginx_port}/api/x", {}, tree_pids(nginx.pid)),
            # Not one of the issue's legs: the floor for any Python proxy (bench/relay.py).
            "r_python_relay": (f"http://127.0.0.1:{relay_port}/api/x", {}, [relay.pid]),
            "c_proxy_public": (f"http://127.0.0.1:{proxy_port}/public/x", {}, [proxy.pid]),
            "d_proxy_m2m": (f"http://127.0.0.1:{proxy_port}/api/x", m2m, [proxy.pid]),
            # (d) with a header numbered per request (as X-Request-Id or traceparent):
            # no head repeats, so nothing the proxy remembers per connection applies.
            "d2_proxy_m2m_varied": (
                f"http://127.0.0.1:{proxy_port}/api/x", {**m2m, "X-Request-Id": SEQ}, [proxy.pid],
            ),
            # The headline: what a partner's client sends — its own X-Request-Id and W3C
            # traceparent on every request, beside the usual fields — with a cached M2M
            # token; (b2) nginx relaying the same heads, (t2) through aiohttp's door.
            "t_proxy_m2m_traced": (
                f"http://127.0.0.1:{proxy_port}/api/x", {**m2m, **TRACED}, [proxy.pid],
            ),
            "t2_proxy_m2m_traced_aiohttp": (
                f"http://127.0.0.1:{door_port}/api/x", {**m2m, **TRACED}, [door.pid],
            ),
            "b2_nginx_traced": (
                f"http://127.0.0.1:{nginx_port}/api/x", {**m2m, **TRACED}, tree_pids(nginx.pid),
            ),
            # Not a headline leg: (b2) writing an access line a request, as (t) does.
            "b3_nginx_traced_logged": (
                f"http://127.0.0.1:{logged_port}/api/x", {**m2m, **TRACED}, tree_pids(nginx.pid),
            ),
            "e_proxy_jwt": (f"http://127.0.0.1:{proxy_port}/api/x", jwt, [proxy.pid]),
            # (e) with a client-credentials JWT of another issuer (Authgear's claims).
            "g_proxy_issuer_jwt": (
                f"http://127.0.0.1:{proxy_port}/api/x",
                {"Authorization": f"Bearer {issuer_jwt}"},
                [proxy.pid],
            ),
        }
        wanted = set(filter(None, args.legs.split(",")))
        # (b3) runs when named: a side measurement, not a leg `make bench` needs.
        chosen = {
            name: leg for name, leg in legs.items()
            if name in wanted or (not wanted and name != "b3_nginx_traced_logged")
        }
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
        # --instructions-only: no timed legs, only the callgrind counts (a minute, and
        # steady across runs: what a change's "within N% of before" compares).
        timed_rounds = 0 if args.instructions_only else args.rounds
        for url, headers, _pids in chosen.values() if timed_rounds else ():
            wrk(url, headers, 1, 8)  # warm: connections, caches, JWKS
        # Legs interleaved, round after round: a noisy neighbour then slows every leg a
        # little instead of one leg a lot, and the median per leg is compared.
        for n in range(timed_rounds):
            for name, (url, headers, pids) in chosen.items():
                one = {"saturation": wrk(url, headers, args.seconds, args.connections),
                       "fixed_rate": openloop(url, headers, args.rate, args.fixed_seconds, pids)}
                rounds[name].append(one)
                print(f"round {n + 1} {name}: {json.dumps(one)}", flush=True)
        phase("http_legs")
        serial_legs = [
            n for n in ("c_proxy_public", "d_proxy_m2m", "d2_proxy_m2m_varied",
                        "t_proxy_m2m_traced", "t2_proxy_m2m_traced_aiohttp", "e_proxy_jwt",
                        "g_proxy_issuer_jwt")
            if n in chosen
        ]
        serial_runs: dict[str, list[float]] = {name: [] for name in serial_legs}
        for n in range(timed_rounds):
            for name in serial_legs:
                url, headers, pids = chosen[name]
                one = serial(int(url.split(":")[2].split("/")[0]), pids[0], url, headers,
                             args.seconds)
                serial_runs[name].append(one["cpu_us_per_request"])
                print(f"serial round {n + 1} {name}: {json.dumps(one)}", flush=True)
        results["serial_cpu_us"] = {
            name: {"median": statistics.median(runs), "rounds": runs}
            for name, runs in serial_runs.items()
            if runs
        }
        phase("serial")
        if shutil.which("valgrind") and not args.dry_run:
            # A second proxy, under callgrind, on ports of its own (same upstream, same
            # emulator): instructions per request do not move with the machine's load.
            cg_port, cg_admin = free_port(), free_port()
            cg_config = proxy_config(s.tmp, up_port, clerk_port, cg_port, cg_admin,
                                     issuer_seeded["issuer"])
            cg_config = cg_config.rename(s.tmp / "proxy-callgrind.yaml")
            cg_door = proxy_config(s.tmp, up_port, clerk_port, cg_port, cg_admin,
                                   issuer_seeded["issuer"], fast_path=False,
                                   name="proxy-callgrind-aiohttp.yaml")
            results["instructions_per_request"] = {}
            for name in serial_legs:
                url, headers, _pids = chosen[name]
                out = subprocess.run(
                    [PY, "-m", "bench.instructions", str(cg_port),
                     str(cg_door if name.endswith("_aiohttp") else cg_config),
                     "/" + url.split("/", 3)[3], json.dumps(headers)],
                    cwd=ROOT, capture_output=True, text=True, check=False, timeout=600,
                )
                if out.returncode != 0:
                    raise SystemExit(f"instructions of {name} failed: {out.stderr[-2000:]}")
                count = json.loads(out.stdout.strip().splitlines()[-1])["instructions_per_request"]
                results["instructions_per_request"][name] = count
                print(f"instructions {name}: {count:.0f}", flush=True)
        phase("instructions")
        if args.instructions_only:
            return results
        for name, runs in rounds.items():
            results["legs"][name] = {
                "saturation": medians([r["saturation"] for r in runs]),
                "fixed_rate": medians([r["fixed_rate"] for r in runs]),
                "rounds": runs,
            }
        calls = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{clerk_port}/__emulator/calls", timeout=5).read())
        results["clerk_calls_during_http_legs"] = calls
        if not args.skip_sio and not args.dry_run:
            # Its own proxy, upstream and probe; this run's Clerk emulator (100 tokens).
            sio_args = ["--clients", str(args.sio_clients), "--clerk-port", str(clerk_port),
                        "--machine-id", seeded["scores_partner_machine_id"]]
            if args.sio_before:
                sio_args += ["--before", args.sio_before]
            out = subprocess.run(
                [PY, "-m", "bench.sio_fanout", *sio_args],
                cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
            )
            lines = out.stdout.strip().splitlines()
            results["legs"]["f_socketio"] = json.loads(lines[-1]) if lines else {"error": out.stderr[-2000:]}
            print(f"f_socketio: {json.dumps(results['legs']['f_socketio'])}", flush=True)
        phase("socketio")
    return results


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    """The side-by-side ratios of whichever legs ran (`--legs` may choose a few)."""
    legs = r["legs"]
    cpu = r.get("serial_cpu_us", {})

    def rps(name: str) -> float:
        return float(legs[name]["saturation"]["rps"])

    def p90(name: str) -> float:
        return float(legs[name]["fixed_rate"]["p90_ms"])

    def cpu_per_1k(name: str) -> float:
        return float(legs[name]["fixed_rate"]["cpu_s_per_1k"])

    def when(value: Callable[[], float], *names: str) -> float | None:
        return value() if all(name in legs for name in names) else None

    c, d, d2 = "c_proxy_public", "d_proxy_m2m", "d2_proxy_m2m_varied"
    t, t2, b2 = "t_proxy_m2m_traced", "t2_proxy_m2m_traced_aiohttp", "b2_nginx_traced"
    out: dict[str, Any] = {
        # The headline (issue 27): the proxy's CPU per request on traced partners' heads
        # against nginx relaying the same heads, and aiohttp's door against the fast path.
        "cpu_t_over_b2": when(lambda: cpu_per_1k(t) / cpu_per_1k(b2), t, b2),
        "cpu_t2_over_t": when(lambda: cpu_per_1k(t2) / cpu_per_1k(t), t, t2),
        "cpu_t_over_b3_logged": when(
            lambda: cpu_per_1k(t) / cpu_per_1k("b3_nginx_traced_logged"), t, "b3_nginx_traced_logged"
        ),
        "cpu_t": when(lambda: cpu_per_1k(t), t),
        "added_p90_ms_t_minus_b2": when(lambda: p90(t) - p90(b2), t, b2),
        "d_over_c_serial_cpu": (
            cpu[c]["median"] / cpu[d]["median"] if c in cpu and d in cpu else None
        ),
        "d_over_c_by_round": [
            dd["saturation"]["rps"] / cc["saturation"]["rps"]
            for cc, dd in zip(legs[c]["rounds"], legs[d]["rounds"], strict=True)
        ] if c in legs and d in legs else None,
        "c_over_a_throughput": when(lambda: rps(c) / rps("a_direct"), c, "a_direct"),
        "d_over_c_throughput": when(lambda: rps(d) / rps(c), c, d),
        "d_over_b_throughput": when(lambda: rps(d) / rps("b_nginx"), d, "b_nginx"),
        "e_over_c_throughput": when(lambda: rps("e_proxy_jwt") / rps(c), c, "e_proxy_jwt"),
        # Issue 21's target: an issuer JWT within 5% of (e)'s CPU per request.
        "g_over_e_cpu": when(
            lambda: cpu_per_1k("g_proxy_issuer_jwt") / cpu_per_1k("e_proxy_jwt"),
            "g_proxy_issuer_jwt", "e_proxy_jwt",
        ),
        "added_p90_ms_d_minus_a": when(lambda: p90(d) - p90("a_direct"), d, "a_direct"),
        "added_p90_ms_d_minus_b": when(lambda: p90(d) - p90("b_nginx"), d, "b_nginx"),
        "cpu_d": when(lambda: cpu_per_1k(d), d),
        "cpu_d_over_b": when(lambda: cpu_per_1k(d) / cpu_per_1k("b_nginx"), d, "b_nginx"),
        "cpu_d_over_relay": when(
            lambda: cpu_per_1k(d) / cpu_per_1k("r_python_relay"), d, "r_python_relay"
        ),
        "d2_over_c_throughput": when(lambda: rps(d2) / rps(c), c, d2),
        "added_p90_ms_d2_minus_a": when(lambda: p90(d2) - p90("a_direct"), d2, "a_direct"),
        "cpu_d2": when(lambda: cpu_per_1k(d2), d2),
    }
    return {name: value for name, value in out.items() if value is not None}


def table(r: dict[str, Any], extra: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"Run: {m['date']}, commit `{m['commit']}`, {m['nproc']} cores ({m['cpu']}); "
        f"wrk -t1 -c{r['settings']['connections']} for {r['settings']['seconds']} s per leg; "
        f"open loop at {r['settings']['rate']:.0f} req/s for {r['settings'].get('fixed_seconds', r['settings']['seconds'])} s; "
        f"legs interleaved, {r['settings']['rounds']} rounds, medians shown.",
        "",
        "| leg | saturation req/s | p50 ms | p90 ms | p99 ms | errors | CPU s / 1k req | RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, leg in r["legs"].items():
        if "saturation" not in leg:
            continue
        sat, fr = leg["saturation"], leg["fixed_rate"]
        lines.append(
            f"| {name} | {sat['rps']:.0f} | {fr['p50_ms']:.2f} | {fr['p90_ms']:.2f} | "
            f"{fr['p99_ms']:.2f} | {fr['errors'] + sat['non_2xx']:.0f} | {fr['cpu_s_per_1k']:.3f} | {fr['rss_mb']:.0f} |"
        )
    q = r["ratios"]
    headline = (
        [
            f"- **headline, traced partners' heads: (t)/(b2) nginx CPU per request "
            f"{q['cpu_t_over_b2']:.2f}**; (t) {q['cpu_t']:.3f} vCPU per 1,000 req/s; "
            f"added p90 (t) - (b2) {q['added_p90_ms_t_minus_b2']:.2f} ms"
            + (f"; aiohttp's door (t2)/(t): {q['cpu_t2_over_t']:.2f}" if "cpu_t2_over_t" in q else "")
        ]
        if "cpu_t_over_b2" in q
        else []
    )
    lines += [
        "",
        *headline,
        "- ratios: " + ", ".join(
            f"{k} {', '.join(f'{x:.2f}' for x in v) if isinstance(v, list) else f'{v:.3f}'}"
            for k, v in q.items()
        ),
        f"- one request at a time on one keep-alive connection, proxy CPU µs per request (median of "
        f"{r['settings']['rounds']}): "
        + ", ".join(f"{k} {v['median']:.0f}" for k, v in r.get("serial_cpu_us", {}).items()),
        *(
            [
                "- instructions per request in the proxy (user space, callgrind; steady across "
                "runs): "
                + ", ".join(f"{k} {v / 1000:.0f}k" for k, v in r["instructions_per_request"].items())
            ]
            if r.get("instructions_per_request")
            else []
        ),
        f"- Clerk calls during all HTTP legs: {r['clerk_calls_during_http_legs']}",
        *(
            [
                "- wall-clock seconds of this run by phase: "
                + ", ".join(f"{k} {v:.0f}" for k, v in r["phase_seconds"].items())
            ]
            if r.get("phase_seconds")
            else []
        ),
    ]
    sio = r["legs"].get("f_socketio")
    if sio:
        if "rows" in sio:
            from bench.sio_fanout import table

            lines += ["", "(f) Socket.IO sockets leg:", "```", table(sio), "```"]
        else:
            lines.append(f"- (f) Socket.IO sockets leg: {json.dumps(sio)}")
    for title, data in extra.items():
        lines.append(f"- {title}: {json.dumps(data)}")
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    before, _, rest = doc.partition(start)
    _, _, after = rest.partition(end)
    DOC.write_text(f"{before}{start}\n{text}\n{end}{after}")


def sub_json(*cmd: str) -> dict[str, Any]:
    out = subprocess.run([PY, "-m", *cmd], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--fixed-seconds", type=int, default=10,
                        help="length of each fixed-rate run (CPU per request is read over it)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of all legs, interleaved; each figure is the median")
    parser.add_argument("--sio-clients", type=int, default=1000,
                        help="the sockets leg's N (1000, 5000, 10000: raise ulimit -n first)")
    parser.add_argument("--sio-before", default="",
                        help="a checkout (with its .venv) whose proxy the sockets leg also runs")
    parser.add_argument("--skip-sio", action="store_true")
    parser.add_argument("--legs", default="", help="comma-separated leg names (default: all)")
    parser.add_argument("--instructions-only", action="store_true",
                        help="only the callgrind instruction counts per leg, printed as JSON")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the HTTP legs only; write no results and no table")
    args = parser.parse_args()
    results = run(args)
    if args.instructions_only:
        print(json.dumps(results.get("instructions_per_request", {})))
        return
    if args.dry_run:
        return
    results["ratios"] = ratios(results)
    started = time.monotonic()
    results["clerk_cost"] = sub_json("bench.clerk_cost")
    results["memory"] = sub_json("bench.memory")
    results["phase_seconds"]["clerk_cost_and_memory"] = round(time.monotonic() - started, 1)
    results["phase_seconds"]["total"] = round(sum(results["phase_seconds"].values()), 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (RESULTS / f"{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(results, indent=2) + "\n")
    text = table(results, {"Clerk cost": results["clerk_cost"], "memory": results["memory"]})
    if not args.legs:  # a few legs chosen: printed, not written over the full run's figures
        write_doc(text)
    print(text)


if __name__ == "__main__":
    main()
