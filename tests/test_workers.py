"""`run --workers N` supervision through the CLI: a worker that dies is logged (which one,
and why) and restarted; workers that keep dying stop the parent with exit code 1."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import Recorder
from tests.test_process import ROOT, Running, control_port, upstream, write_config

__all__ = ["upstream"]  # a fixture


async def start_workers(config: Path, port: int, admin: int, count: int) -> Running:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "run", "--config", str(config),
        "--workers", str(count),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "CLERK_SECRET_KEY": "sk_test_unit"},
    )
    return Running(proc, port, admin, control_port(config))


def lines(running: Running, msg: str) -> list[dict[str, Any]]:
    return [line for line in running.lines if line.get("msg") == msg]


async def wait_for(running: Running, msg: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    for _ in range(int(timeout / 0.02)):
        found = lines(running, msg)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} {msg!r} lines: {running.lines}")


async def test_a_killed_worker_is_logged_and_restarted(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    running = await start_workers(config, port, admin, 2)
    try:
        serving = await wait_for(running, "serving", 2)
        victim = serving[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        died = (await wait_for(running, "worker died; restarting it", 1))[0]
        assert died["pid"] == victim and died["signal"] == "SIGKILL"
        assert died["level"] == "error" and died["worker"] in (0, 1)
        # The supervisor logs the restart after the death: wait for it, do not race it.
        started = await wait_for(running, "worker started", 3)
        assert len(started) == 3 and started[-1]["worker"] == died["worker"]
        serving = await wait_for(running, "serving", 3)
        assert serving[-1]["pid"] == started[-1]["pid"] != victim
        assert running.proc.returncode is None
        for _ in range(10):
            async with aiohttp.ClientSession() as fresh:  # new connections reach both workers
                async with fresh.get(running.url("/public/x")) as resp:
                    assert resp.status == 200
    finally:
        if running.proc.returncode is None:
            running.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.proc.wait(), 30) == 0


async def test_workers_that_keep_dying_stop_the_parent_with_exit_1(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    running = await start_workers(config, port, admin, 2)
    try:
        killed: set[int] = set()
        for _ in range(500):
            if running.proc.returncode is not None:
                break
            for line in lines(running, "worker started"):
                if line["pid"] not in killed:
                    killed.add(line["pid"])
                    os.kill(line["pid"], signal.SIGKILL)
            await asyncio.sleep(0.02)
        assert await asyncio.wait_for(running.proc.wait(), 30) == 1
        await asyncio.wait_for(running._reader, 10)
        assert len(lines(running, "worker died; restarting it")) == 5
        gave_up = lines(running, "workers are crash-looping; stopping")
        assert len(gave_up) == 1, running.lines
        assert gave_up[0]["signal"] == "SIGKILL" and gave_up[0]["restarts"] == 5
        assert len(killed) >= 6  # the two first workers and the restarts
    finally:
        if running.proc.returncode is None:
            running.proc.kill()


async def test_a_worker_that_exits_2_stops_them_all_with_2(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    """Its config (or port) is wrong: restarting would fail the same way."""
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    running = await start_workers(config, port, admin, 2)
    try:
        serving = await wait_for(running, "serving", 2)
        config.write_text("upstream: {url: 'not a url'}\n")
        os.kill(serving[0]["pid"], signal.SIGKILL)  # its replacement reads the broken file
        assert await asyncio.wait_for(running.proc.wait(), 30) == 2
        await asyncio.wait_for(running._reader, 10)
        (line,) = lines(running, "worker exited: its config or port is wrong; stopping the others")
        assert line["exit_code"] == 2
        assert len(lines(running, "stopped")) == 1  # the other worker drained
    finally:
        if running.proc.returncode is None:
            running.proc.kill()
