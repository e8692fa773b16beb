"""`make image-smoke`: the image `make image` built (build/image/build.json), run as the
chart runs it, against the Clerk emulator and an echo upstream on this machine's loopback.

As the chart: user 10001, read-only root with only a tmpfs /tmp writable, every capability
dropped, no privilege escalation, the config as a ConfigMap volume and the Clerk key as a
Secret volume, both read-only and laid out as the kubelet lays them out (files reached
through a `..data` symlink that an update swaps in one rename). The host's network, so the
container reaches the emulator and the upstream on 127.0.0.1.

Checks: the image's user; no compiler, no pip in the venv, no source tree, no build secret,
.pyc compiled in, nothing writable but /tmp; the request path compiled (the serving log
line, authproxy_build_info); /healthz, /readyz, /metrics; 401 without a token and with a
bad one; 200 with an M2M token created through the emulator's API, and the X-Auth-*
headers at the upstream; a ConfigMap-style swap reloading; a stop with a request in flight
(it completes, 200) and a stop holding a request past the grace (cut), each exiting 0 within
shutdown.delay + shutdown.grace_period + 1 s; no key or token in the container's log.
Prints the figures (bases, build, size, start and stop times) and exits 1 on any miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import yaml
from aiohttp import web

from proxy import __version__
from proxy.config.load import load_config
from proxy.emulator import seed_demo, serve

STARTED = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent
BUILD_JSON = ROOT / "build" / "image" / "build.json"
UID = 10001
CONFIG_DIR = "/etc/clerk-auth-proxy"
SECRET_DIR = "/var/run/secrets/clerk"
# A short drain, so each stop takes seconds, not production's 25 s; the bound is the same
# promise: delay + grace_period + 1 s.
SHUTDOWN = {"delay": "1s", "grace_period": "4s"}
# In flight when the stop comes, and done well inside the grace.
IN_FLIGHT_SECONDS = 2.5
# Held by the upstream far past the grace: the drain must cut it, not wait.
HELD_SECONDS = 60.0

# Runs inside the image, as the proxy would (same user, same read-only root).
PROBE = r"""
import glob, importlib.util, json, os, shutil, sys
import proxy

def writable(path):
    try:
        with open(os.path.join(path, ".probe"), "w"):
            pass
    except OSError:
        return False
    os.unlink(os.path.join(path, ".probe"))
    return True

venv = os.environ["VIRTUAL_ENV"]
package = os.path.dirname(proxy.__file__)
def ours(path):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    return "clerk-auth-proxy" in text or "clerk_auth_proxy" in text

# The build stage's places, our project files, and the package anywhere but the venv.
tree = [p for p in ("/src", "/wheels", "/requirements", "/opt/build") if os.path.exists(p)]
for d, _, files in os.walk("/"):
    if d.startswith(("/proc", "/sys", "/dev")):
        continue
    for f in files:
        path = os.path.join(d, f)
        if f in ("pyproject.toml", "setup.py", "uv.lock", "Dockerfile", "Makefile") and ours(path):
            tree.append(path)
        elif path.endswith("/proxy/request/app.py") and not path.startswith(package + "/"):
            tree.append(path)
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "python": sys.version.split()[0],
    "proxy": proxy.__file__, "venv": venv, "compiled": proxy.compiled(),
    "compilers": [c for c in ("cc", "gcc", "c++", "g++", "clang", "tcc") if shutil.which(c)]
        + glob.glob("/usr/lib/gcc/*/*/cc1"),
    "venv_pip": importlib.util.find_spec("pip") is not None
        or os.path.exists(os.path.join(venv, "bin", "pip")),
    "source_tree": tree,
    "pyc": len(glob.glob(os.path.join(package, "**", "__pycache__", "*.pyc"), recursive=True)),
    "writable": [p for p in ("/", "/etc/clerk-auth-proxy", "/opt", venv, "/run", "/var/tmp", "/tmp")
                 if writable(p)],
    "run_secrets": sorted(os.listdir("/run/secrets")) if os.path.isdir("/run/secrets") else [],
}))
"""


class SmokeFailure(Exception):
    pass


def fail(what: str) -> NoReturn:
    raise SmokeFailure(what)


def check(ok: bool, what: str, got: object = None) -> None:
    if not ok:
        fail(what + ("" if got is None else f" (got {got!r})"))
    print(f"image-smoke: ok  {time.monotonic() - STARTED:5.1f} s  {what}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Engine:
    """docker or `podman --runtime runc`, with the ulimits `make image` found this machine
    needs (build/image/build.json)."""

    command: tuple[str, ...]
    run_flags: tuple[str, ...]

    async def __call__(self, *args: str, may_fail: bool = False) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.command, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode and not may_fail:
            fail(
                f"{' '.join((*self.command, *args[:2]))} … exited {proc.returncode}: {err.decode()}"
            )
        return out.decode() + (err.decode() if may_fail else "")

    async def logs(self, name: str) -> str:
        return await self("logs", name, may_fail=True)


class KubeletVolume:
    """A directory as the kubelet keeps a ConfigMap or Secret volume: each file a symlink
    through `..data` to a timestamped directory; an update writes a new directory and
    swaps `..data` with one rename, so a reader sees all old or all new files."""

    def __init__(self, root: Path, mode: int, group: int | None) -> None:
        self.root, self.mode, self.group = root, mode, group
        root.mkdir(mode=0o755)

    def write(self, files: Mapping[str, str]) -> None:
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
        version = self.root / f"..{stamp}.{secrets.token_hex(4)}"
        version.mkdir(mode=0o755)
        for name, text in files.items():
            path = version / name
            path.write_text(text)
            if self.group is not None:
                os.chown(path, 0, self.group)
            path.chmod(self.mode)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        staged.replace(data)
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if old is not None:
            shutil.rmtree(self.root / old)


@dataclass
class Upstream:
    """The app behind the proxy: answers every path with what it was sent; `?sleep=S`
    holds the answer S seconds."""

    seen: dict[str, dict[str, str]] = field(default_factory=dict)
    holding: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            self.seen[request.path] = dict(request.headers)
            if sleep := request.query.get("sleep"):
                self.holding.set()
                await asyncio.sleep(float(sleep))
            return web.json_response({"path": request.path})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        return app


@dataclass
class Figures:
    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        self.rows.append((name, value))

    def print(self) -> None:
        print("image-smoke: figures")
        for name, value in self.rows:
            print(f"  {name:<18} {value}")


class Smoke:
    def __init__(self, build: dict[str, Any], work: Path) -> None:
        self.build = build
        self.image: str = build["image"]
        self.engine = Engine(tuple(build["engine"]), tuple(build["run_flags"]))
        self.work = work
        self.figures = Figures()
        self.upstream = Upstream()
        self.port, self.admin_port = free_port(), free_port()
        self.secret_key = "sk_live_" + secrets.token_urlsafe(32)
        self.names: list[str] = []
        self.clerk_url = self.upstream_url = ""
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90))

    # -- the stack ---------------------------------------------------------------------

    def config(self, *, open_route: bool) -> str:
        """The image's own production config, as the chart's ConfigMap would carry it, on
        loopback ports and with the short drain."""
        config = yaml.safe_load((ROOT / "config" / "production.yaml").read_text())
        config["listen"] = {"host": "127.0.0.1", "port": self.port}
        config["admin"] = {"host": "127.0.0.1", "port": self.admin_port}
        config["shutdown"] = SHUTDOWN
        if open_route:
            config["routes"].insert(
                0, {"name": "open", "path": "/api/v1/open/**", "auth": "public"}
            )
        return yaml.safe_dump(config, sort_keys=False)

    def as_the_chart(self) -> list[str]:
        """The chart's securityContext and /tmp emptyDir, as engine flags."""
        flags = ["--read-only", "--tmpfs", "/tmp:rw,size=16m,mode=1777"]
        if self.engine.command[0] == "podman":
            # podman's --read-only leaves /run and /var/tmp writable; Kubernetes does not.
            flags.append("--read-only-tmpfs=false")
        return [
            *flags, "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--user", f"{UID}:{UID}", *self.engine.run_flags,
        ]  # fmt: skip

    async def run_proxy(self, name: str) -> float:
        """Starts the proxy container; seconds until /healthz answers."""
        engine = self.engine
        started = time.monotonic()
        self.names.append(name)
        await engine(
            "run", "--detach", "--name", name, "--network", "host", *self.as_the_chart(),
            "--volume", f"{self.work / 'config'}:{CONFIG_DIR}:ro",
            "--volume", f"{self.work / 'secret'}:{SECRET_DIR}:ro",
            "--env", f"CLERK_SECRET_KEY_FILE={SECRET_DIR}/secret_key",
            "--env", f"CLERK_API_URL={self.clerk_url}",
            "--env", f"UPSTREAM_URL={self.upstream_url}",
            self.image, "run", "--config", f"{CONFIG_DIR}/config.yaml",
        )  # fmt: skip
        deadline = started + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(self.admin("/healthz")) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            state = await engine("inspect", "--format", "{{.State.Running}}", name)
            if state.strip() != "true":
                fail(f"the container stopped while starting:\n{await engine.logs(name)}")
            await asyncio.sleep(0.1)
        fail(f"no /healthz within 30 s:\n{await engine.logs(name)}")

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def api(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def get(
        self, url: str, token: str | None = None, session: aiohttp.ClientSession | None = None
    ) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (session or self.session).get(url, headers=headers) as resp:
            return resp.status, await resp.text()

    async def one_request(self, path: str, token: str) -> str:
        """GET on a connection of its own: the status, or how it was cut. (aiohttp would
        retry a GET cut on its connection, and report the retry's refused connection.)"""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            head = await reader.readline()
        except ConnectionError as exc:
            return f"cut ({type(exc).__name__})"
        finally:
            writer.close()
        parts = head.split()
        return parts[1].decode() if len(parts) >= 2 else "cut (closed without a response)"

    # -- the checks --------------------------------------------------------------------

    async def image_checks(self) -> None:
        engine = self.engine
        (inspected,) = json.loads(await engine("image", "inspect", self.image))
        config = inspected.get("Config") or inspected["ContainerConfig"]
        check(config["User"] == f"{UID}:{UID}", f"the image's user is {UID}:{UID}", config["User"])
        leaked = [
            e
            for e in config.get("Env", [])
            if re.match(r"PIP_(CONFIG_FILE|CERT|INDEX|EXTRA|TRUSTED)", e)
        ]
        check(not leaked, "no pip config of the build in the image's environment", leaked)
        history = await engine("history", "--no-trunc", "--format", "{{.CreatedBy}}", self.image)
        check("type=secret" not in history, "no build secret mounted in the final stage's history")
        probe_out = await engine(
            "run", "--rm", "--network", "none", *self.as_the_chart(), "--entrypoint", "python",
            self.image, "-c", PROBE,
        )  # fmt: skip
        probe = json.loads(probe_out.strip().splitlines()[-1])
        check((probe["uid"], probe["gid"]) == (UID, UID), "runs as uid/gid 10001", probe["uid"])
        check(probe["compilers"] == [], "no compiler", probe["compilers"])
        check(not probe["venv_pip"], "no pip in the venv")
        check(
            probe["source_tree"] == [],
            "no source tree (no /src, /wheels, pyproject, setup.py)",
            probe["source_tree"],
        )
        check(
            probe["proxy"].startswith(probe["venv"] + "/"),
            "proxy imported from the venv",
            probe["proxy"],
        )
        check(probe["compiled"] is True, "proxy.compiled() is True in the image")
        check(probe["pyc"] > 50, f"bytecode compiled in ({probe['pyc']} .pyc)", probe["pyc"])
        check(probe["writable"] == ["/tmp"], "only /tmp writable", probe["writable"])
        check(
            not {"pip.conf", "pip-ca"} & set(probe["run_secrets"]),
            "no build secret in /run/secrets",
            probe["run_secrets"],
        )
        self.figures.add("python", probe["python"])

    async def serving_checks(self, name: str, token: str, machine_id: str, token_id: str) -> None:
        for path in ("/healthz", "/readyz", "/metrics"):
            status, _ = await self.get(self.admin(path))
            check(status == 200, f"GET {path} 200", status)
        _, metrics = await self.get(self.admin("/metrics"))
        info = re.search(r"^authproxy_build_info\{([^}]*)\} 1\.0$", metrics, re.MULTILINE)
        check(
            info is not None
            and 'compiled="true"' in info.group(1)
            and f'version="{__version__}"' in info.group(1),
            f'authproxy_build_info{{compiled="true",version="{__version__}"}}',
            info and info.group(0),
        )
        serving = [
            line for line in map(_json_line, (await self.engine.logs(name)).splitlines())
            if line.get("msg") == "serving"
        ]  # fmt: skip
        check(
            len(serving) == 1 and serving[0].get("compiled") is True,
            'the serving log line says "compiled": true',
            serving,
        )

        status, body = await self.get(self.api("/api/v1/matches/live"))
        check(
            status == 401 and "token_missing" in body,
            "401 token_missing without a token",
            (status, body),
        )
        bad = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
        status, body = await self.get(self.api("/api/v1/matches/live"), bad)
        check(status == 401, "401 with a bad token", (status, body))
        status, body = await self.get(self.api("/api/v1/matches/live"), token)
        check(status == 200, "200 with the M2M token", (status, body))
        seen = {k.lower(): v for k, v in self.upstream.seen.get("/api/v1/matches/live", {}).items()}
        expected = {
            "x-auth-principal-type": "machine",
            "x-auth-principal-id": machine_id,
            "x-auth-token-type": "m2m_token",
            "x-auth-token-id": token_id,
        }
        got = {k: seen.get(k) for k in expected}
        check(got == expected, "the upstream got the X-Auth-* headers of the token's machine", got)
        check("authorization" not in seen, "the upstream got no Authorization header")

    async def reload_check(self, config: KubeletVolume) -> None:
        status, _ = await self.get(self.api("/api/v1/open/ping"))
        check(status == 401, "before the swap, /api/v1/open/ needs a token", status)
        config.write({"config.yaml": self.config(open_route=True)})
        swapped = time.monotonic()
        while time.monotonic() - swapped < 15:
            status, _ = await self.get(self.api("/api/v1/open/ping"))
            if status == 200:
                break
            await asyncio.sleep(0.2)
        check(
            status == 200,
            "the ConfigMap-style swap reloaded the config (the new public route answers)",
            status,
        )
        _, metrics = await self.get(self.admin("/metrics"))
        check(
            'authproxy_config_reloads_total{result="ok"} 1.0' in metrics,
            "authproxy_config_reloads_total{result=ok} is 1",
        )
        self.figures.add("reload", f"{time.monotonic() - swapped:.1f} s after the swap")

    async def stop_check(
        self, name: str, token: str, hold: float, bound: float
    ) -> tuple[float, float, str]:
        """Stops the container while a request is held `hold` s by the upstream: seconds
        from the SIGTERM to the container's exit, from running `stop` to its return, and
        what the client got."""
        self.upstream.holding.clear()
        request = asyncio.create_task(self.one_request(f"/api/v1/matches/held?sleep={hold}", token))
        await asyncio.wait_for(self.upstream.holding.wait(), 10)
        sent = time.time()
        # The engine's own kill comes well after the bound: a miss shows as a late exit.
        stop = asyncio.create_task(self.engine("stop", "--time", str(int(bound) + 10), name))
        await asyncio.sleep(0.3)
        status, _ = await self.get(self.admin("/readyz"))
        check(status == 503, "/readyz 503 while draining", status)
        await stop
        returned = time.time() - sent
        got = await asyncio.wait_for(request, 5)
        state = await self.engine(
            "inspect", "--format", "{{.State.ExitCode}} {{.State.FinishedAt}}", name
        )
        code, finished = state.strip().split(" ", 1)
        check(code == "0", f"{name} exited 0", code)
        # The bound runs from the SIGTERM (the proxy's "draining" line: the engine CLI's own
        # start-up before it signals is not the proxy's time) to the exit the engine
        # recorded (its clean-up after the exit, which `stop` also waits for, neither).
        draining = [
            line["ts"]
            for line in map(_json_line, (await self.engine.logs(name)).splitlines())
            if line.get("msg") == "draining"
        ]
        check(len(draining) == 1, f"{name} logged one draining line", draining)
        stopped = finished_at(finished) - draining[0]
        check(
            0 < stopped <= bound,
            f"{name} exited {stopped:.2f} s after the SIGTERM, within delay + grace + 1 ="
            f" {bound:g} s (`stop` returned {returned:.2f} s after it was run)",
            stopped,
        )
        return stopped, returned, got

    async def run(self) -> None:
        smoke_started = time.monotonic()
        built = self.build
        self.figures.add(
            "bases",
            f"{built['bases']}: {built['bases_seconds']:.1f} s ({', '.join(built['bases_made']) or 'cached'})",
        )
        self.figures.add("build", f"{built['build_seconds']:.1f} s")
        self.figures.add("image", f"{self.image}, {built['size_bytes'] / 1e6:.0f} MB")
        await self.image_checks()

        clerk = await serve("127.0.0.1", 0, secret_key=self.secret_key)
        # A request the proxy cut ends its handler at once (the held one sleeps a minute).
        runner = web.AppRunner(
            self.upstream.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1
        )
        await runner.setup()
        upstream_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
        self.clerk_url, self.upstream_url = clerk.url, f"http://127.0.0.1:{upstream_port}"
        try:
            await self.against(clerk.url, seed_demo(clerk.emulator))
        finally:
            await runner.cleanup()
            await clerk.close()
        self.figures.add("smoke", f"{time.monotonic() - smoke_started:.1f} s")

    async def against(self, clerk_url: str, seeded: dict[str, str]) -> None:
        root = self.work
        as_root = os.geteuid() == 0
        config = KubeletVolume(root / "config", 0o644, None)
        # The chart's Secret volume: defaultMode 0440, group 10001 (the pod's fsGroup). Not
        # root (rootless podman): readable by all instead, as no chown to 10001 is possible.
        secret = KubeletVolume(
            root / "secret", 0o440 if as_root else 0o444, UID if as_root else None
        )
        config.write({"config.yaml": self.config(open_route=False)})
        secret.write({"secret_key": self.secret_key + "\n"})
        loaded = load_config(
            root / "config" / "config.yaml",
            env={
                "CLERK_SECRET_KEY_FILE": str(root / "secret" / "secret_key"),
                "CLERK_API_URL": clerk_url,
                "UPSTREAM_URL": self.upstream_url,
            },
        )
        bound = loaded.shutdown.delay + loaded.shutdown.grace_period + 1

        # An M2M token as a partner gets one: its machine key at Clerk's POST /m2m_tokens.
        async with self.session.post(
            f"{clerk_url}/m2m_tokens",
            json={"seconds_until_expiration": 600},
            headers={"Authorization": f"Bearer {seeded['scores_partner_machine_secret_key']}"},
        ) as resp:
            check(
                resp.status == 201, "the emulator's POST /m2m_tokens created a token", resp.status
            )
            created = await resp.json()
        token, token_id = created["token"], created["id"]
        machine_id = seeded["scores_partner_machine_id"]

        name = f"clerk-auth-proxy-smoke-{os.getpid()}"
        started = await self.run_proxy(name)
        self.figures.add("start", f"{started:.2f} s to /healthz")
        await self.serving_checks(name, token, machine_id, token_id)
        await self.reload_check(config)
        stopped, returned, got = await self.stop_check(name, token, IN_FLIGHT_SECONDS, bound)
        check(
            got == "200",
            f"the request in flight at the stop completed ({IN_FLIGHT_SECONDS} s upstream)",
            got,
        )
        self.figures.add("stop, in flight", stop_figure(stopped, returned, got, bound))
        logs = await self.engine.logs(name)

        held = f"{name}-held"
        await self.run_proxy(held)
        stopped, returned, got = await self.stop_check(held, token, HELD_SECONDS, bound)
        check(got != "200", "the request held past the grace was cut", got)
        check(stopped >= bound - 1, "and the drain waited out delay + grace first", stopped)
        self.figures.add("stop, held", stop_figure(stopped, returned, got, bound))
        logs += await self.engine.logs(held)

        keys = [self.secret_key, token, seeded["scores_partner_machine_secret_key"]]
        check(not any(k in logs for k in keys), "no key or token in the container's log")

    async def close(self) -> None:
        await self.session.close()
        for name in self.names:
            await self.engine("rm", "--force", name, may_fail=True)


def stop_figure(stopped: float, returned: float, got: str, bound: float) -> str:
    return (
        f"exit {stopped:.2f} s after SIGTERM (bound {bound:g} s), `stop` {returned:.2f} s;"
        f" request: {got}"
    )


def finished_at(text: str) -> float:
    """The engine's FinishedAt: podman's `2026-12-07 14:45:05.345545718 +0000 UTC` or
    docker's `2026-12-07T14:45:05.345545718Z`, to seconds since the epoch."""
    found = re.match(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(\.\d+)?\s*(Z|[+-]\d\d:?\d\d)?", text)
    if found is None:
        fail(f"cannot read the exit time {text!r}")
    day, clock, fraction, zone = found.groups()
    zone = "+00:00" if zone in (None, "Z") else zone[:3] + ":" + zone[-2:]
    stamp = datetime.fromisoformat(f"{day}T{clock}{zone}").timestamp()
    return stamp + float(fraction or 0)


def _json_line(line: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        value = json.loads(line)
        if isinstance(value, dict):
            return value
    return {}


async def main() -> int:
    if not BUILD_JSON.exists():
        print(f"image-smoke: {BUILD_JSON} is missing: run `make image` first", file=sys.stderr)
        return 1
    build = json.loads(BUILD_JSON.read_text())
    with tempfile.TemporaryDirectory(prefix="clerk-auth-proxy-smoke-") as work:
        Path(work).chmod(0o755)  # the container's user reads the volumes through it
        smoke = Smoke(build, Path(work))
        try:
            await smoke.run()
        except SmokeFailure as exc:
            print(f"image-smoke: FAILED {exc}", file=sys.stderr)
            smoke.figures.print()
            return 1
        finally:
            await smoke.close()
    smoke.figures.print()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
