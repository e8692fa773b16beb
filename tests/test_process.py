"""Process life of `clerk-auth-proxy run`: drain on SIGTERM, reload on SIGHUP and on file change."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import unused_port

from tests.support import Recorder, config_dict, upstream_app

ROOT = Path(__file__).resolve().parent.parent


class Running:
    def __init__(
        self, proc: asyncio.subprocess.Process, port: int, admin: int, control: int | None = None
    ) -> None:
        self.proc = proc
        self.port = port
        self.admin = admin
        self.control = control  # revocation.listen's port, when revocation is on
        self.lines: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"raw": raw.decode(errors="replace")})

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin}{path}"

    def control_url(self, path: str) -> str:
        assert self.control is not None, "no revocation section in this config"
        return f"http://127.0.0.1:{self.control}{path}"

    async def wait_log(self, msg: str, timeout: float = 10.0) -> dict[str, Any]:
        for _ in range(int(timeout / 0.05)):
            for line in self.lines:
                if line.get("msg") == msg:
                    return line
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {msg!r} log line; got {self.lines}")


def write_config(path: Path, upstream: str, **overrides: Any) -> tuple[int, int]:
    port, admin = unused_port(), unused_port()
    if "revocation" in overrides:  # its control listener, on a port of its own
        overrides["revocation"] = {"listen": {"port": unused_port()}, **overrides["revocation"]}
    raw = config_dict(upstream, listen={"port": port}, admin={"port": admin}, **overrides)
    if raw["clerk"]["secret_key"] == "sk_test_unit":
        raw["clerk"]["secret_key"] = "${CLERK_SECRET_KEY}"  # start() sets it
    else:  # another emulator's development key, written in the file on purpose
        raw["allow_inline_secrets"] = True
    path.write_text(yaml.safe_dump(raw))
    return port, admin


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[str, Recorder]:
    recorder = Recorder()
    server = await aiohttp_server(upstream_app(recorder))
    return str(server.make_url("")).rstrip("/"), recorder


async def start(config: Path, port: int, admin: int) -> Running:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "run", "--config", str(config),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "CLERK_SECRET_KEY": "sk_test_unit"},
    )
    running = Running(proc, port, admin, control_port(config))
    await running.wait_log("serving")
    return running


def control_port(config: Path) -> int | None:
    """revocation.listen's port in a config `write_config` wrote (None: no revocation)."""
    raw = yaml.safe_load(config.read_text())
    port = raw.get("revocation", {}).get("listen", {}).get("port")
    return int(port) if port is not None else None


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _stop(running: Running) -> int:
    if running.proc.returncode is None:
        running.proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(running.proc.wait(), 30)


async def test_sigterm_drains_in_flight_request_then_exits_0(
    tmp_path: Path, upstream: tuple[str, Recorder], session: aiohttp.ClientSession
) -> None:
    url, recorder = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url, shutdown={"grace_period": 10, "delay": 0.5})
    running = await start(config, port, admin)
    try:
        async with session.get(running.admin_url("/readyz")) as resp:
            assert resp.status == 200
        in_flight = asyncio.create_task(session.get(running.url("/public/slow?delay=1.5")))
        for _ in range(100):
            if recorder.seen:
                break
            await asyncio.sleep(0.02)
        assert recorder.seen, "the slow request never reached the upstream"
        running.proc.send_signal(signal.SIGTERM)
        await running.wait_log("draining")
        async with session.get(running.admin_url("/readyz")) as resp:
            assert resp.status == 503
        resp = await in_flight
        assert resp.status == 200
        assert await resp.text() == "late"
        assert await asyncio.wait_for(running.proc.wait(), 15) == 0
        await running.wait_log("stopped")
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(running.url("/public/x"))
        access = [line for line in running.lines if line.get("msg") == "request"]
        assert access and access[0]["route"] == "public" and access[0]["status"] == 200
        assert set(access[0]) >= {"method", "route", "status", "duration_ms", "principal_type"}
    finally:
        await _stop(running)


async def test_sighup_reload_applies_good_config_and_keeps_old_on_bad(
    tmp_path: Path, upstream: tuple[str, Recorder], session: aiohttp.ClientSession
) -> None:
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    running = await start(config, port, admin)
    try:
        async with session.get(running.url("/public/x")) as resp:
            assert resp.status == 200

        # A valid change: /public/** now requires a token.
        raw = yaml.safe_load(config.read_text())
        raw["routes"][1]["auth"] = "required"
        config.write_text(yaml.safe_dump(raw))
        running.proc.send_signal(signal.SIGHUP)
        await running.wait_log("config reloaded")
        async with session.get(running.url("/public/x")) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "token_missing"

        # A broken file: the running config stays, and the log says why.
        config.write_text("upstream: {url: 'not a url'}\nbogus: 1\n")
        running.proc.send_signal(signal.SIGHUP)
        failed = await running.wait_log("config reload failed; keeping the running config")
        assert any("upstream.url" in p for p in failed["problems"])
        assert any("bogus: unknown key" in p for p in failed["problems"])
        async with session.get(running.url("/public/x")) as resp:
            assert resp.status == 401
        assert running.proc.returncode is None
    finally:
        assert await _stop(running) == 0


async def test_changed_config_file_is_reloaded(
    tmp_path: Path, upstream: tuple[str, Recorder], session: aiohttp.ClientSession
) -> None:
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    running = await start(config, port, admin)
    try:
        raw = yaml.safe_load(config.read_text())
        raw["routes"][1]["auth"] = "required"
        # Kubernetes updates a mounted ConfigMap by swapping a symlink: replace the file.
        fresh = tmp_path / "c.new"
        fresh.write_text(yaml.safe_dump(raw))
        fresh.replace(config)
        line = await running.wait_log("config reloaded", timeout=10)
        assert line["reason"] == "file changed"
        async with session.get(running.url("/public/x")) as resp:
            assert resp.status == 401
    finally:
        assert await _stop(running) == 0


async def test_workers_share_the_port_and_stop_together(
    tmp_path: Path, upstream: tuple[str, Recorder], session: aiohttp.ClientSession
) -> None:
    url, recorder = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "run", "--config", str(config), "--workers", "2",
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "CLERK_SECRET_KEY": "sk_test_unit"},
    )
    running = Running(proc, port, admin)
    try:
        for _ in range(200):
            if sum(1 for line in running.lines if line.get("msg") == "serving") == 2:
                break
            await asyncio.sleep(0.05)
        pids = {line["pid"] for line in running.lines if line.get("msg") == "serving"}
        assert len(pids) == 2, running.lines
        for _ in range(20):
            async with aiohttp.ClientSession() as fresh:  # new connections spread over workers
                async with fresh.get(running.url("/public/x")) as resp:
                    assert resp.status == 200
        assert len(recorder.seen) == 20
    finally:
        assert await _stop(running) == 0
    await asyncio.wait_for(running._reader, 10)  # everything the workers wrote
    assert sum(1 for line in running.lines if line.get("msg") == "stopped") == 2
