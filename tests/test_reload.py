"""Reloads through the CLI: once per change (an edit plus SIGHUP loads once; a SIGHUP with
nothing changed loads nothing; a changed secret file is a change), restart-only keys
compared with what runs, and the config's warnings logged."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from proxy.process.server import CONFIG_POLL_SECONDS
from tests.support import Recorder
from tests.test_process import ROOT, Running, upstream, write_config

__all__ = ["upstream"]  # a fixture


async def _start(config: Path, port: int, admin: int) -> Running:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "run", "--config", str(config),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "CLERK_SECRET_KEY": "sk_test_unit"},
    )
    running = Running(proc, port, admin)
    await running.wait_log("serving")
    return running


def _count(running: Running, msg: str) -> int:
    return sum(1 for line in running.lines if line.get("msg") == msg)


async def _until(running: Running, msg: str, count: int) -> None:
    for _ in range(400):
        if _count(running, msg) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} {msg!r}: {running.lines}")


def _edit(config: Path, **changes: Any) -> None:
    raw = yaml.safe_load(config.read_text())
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    config.write_text(yaml.safe_dump(raw))


async def _stop(running: Running) -> None:
    if running.proc.returncode is None:
        running.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(running.proc.wait(), 30) == 0


async def test_an_edit_and_sighup_reload_once(tmp_path: Path, upstream: tuple[str, Recorder]) -> None:
    url, _ = upstream
    config = tmp_path / "c.yaml"
    secret = tmp_path / "key"
    secret.write_text("sk_test_one\n")
    port, admin = write_config(config, url)
    _edit(config, clerk={"secret_key": None, "secret_key_file": str(secret)})
    running = await _start(config, port, admin)
    try:
        # Both orders happen: the watcher sees the edit first, or the signal comes first.
        for n, level in enumerate(("DEBUG", "WARNING"), start=1):
            _edit(config, logging={"level": level, "access_log": True})
            running.proc.send_signal(signal.SIGHUP)
            await _until(running, "config reloaded", n)
            await asyncio.sleep(CONFIG_POLL_SECONDS + 1)  # the watcher has looked again
            assert _count(running, "config reloaded") == n, running.lines
            await asyncio.sleep(0.5 if n == 1 else 0)

        # Nothing changed: a SIGHUP loads nothing, and says so.
        unchanged = _count(running, "config unchanged; not reloaded")
        running.proc.send_signal(signal.SIGHUP)
        await _until(running, "config unchanged; not reloaded", unchanged + 1)
        assert _count(running, "config reloaded") == 2

        # The secret file is part of the config: rotating the key reloads.
        secret.write_text("sk_test_two\n")
        await _until(running, "config reloaded", 3)
        reloads = [line for line in running.lines if line.get("msg") == "config reloaded"]
        assert reloads[-1]["reason"] == "file changed"
    finally:
        await _stop(running)


async def test_restart_only_keys_are_compared_with_what_runs(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    changed = "config reload: listen changed; it takes effect on restart"
    running = await _start(config, port, admin)
    try:
        _edit(config, listen={"port": port + 1})
        running.proc.send_signal(signal.SIGHUP)
        await _until(running, "config reloaded", 1)
        await _until(running, changed, 1)

        # Back to the bound address: nothing waits for a restart.
        _edit(config, listen={"port": port}, upstream={"url": "http://10.255.255.1:3000"})
        running.proc.send_signal(signal.SIGHUP)
        await _until(running, "config reloaded", 2)
        # The new config's warning is logged with the reload.
        await _until(running, "config: 10.255.255.1 is not a loopback address: the proxy is a "
                     "sidecar for an API that listens on 127.0.0.1 only; an API reachable "
                     "from the network can be called around the proxy, with any X-Auth-* "
                     "headers the caller likes (docs/security.md)", 1)
        assert _count(running, changed) == 1, running.lines
        warning = [line for line in running.lines if str(line.get("msg")).startswith("config: 10.")]
        assert warning[0]["level"] == "warning" and warning[0]["key"] == "upstream.url"
    finally:
        await _stop(running)


async def _admin_get(admin: int, path: str) -> tuple[int, str]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin}{path}") as resp:
            return resp.status, await resp.text()


def _sample(metrics: str, name: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith(name)]


async def test_the_live_config_is_named_and_a_failed_reload_shows(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    # The operator's question after an edit: which config serves? /readyz, the lines and
    # the metrics name it by hash; a failed reload leaves the old hash everywhere and
    # authproxy_config_last_reload_successful at 0 (the ClerkAuthProxyConfigReloadFailed alert).
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    running = await _start(config, port, admin)
    try:
        first = next(line for line in running.lines if line.get("msg") == "serving")["config"]
        assert len(first) == 12 and int(first, 16) >= 0
        _, ready = await _admin_get(admin, "/readyz")
        assert f'"config": "{first}"' in ready
        _, metrics = await _admin_get(admin, "/metrics")
        assert _sample(metrics, "authproxy_config_info") == [f'authproxy_config_info{{hash="{first}"}} 1.0']
        assert _sample(metrics, "authproxy_config_last_reload_successful") == [
            "authproxy_config_last_reload_successful 1.0"
        ]
        assert _sample(metrics, "process_resident_memory_bytes")
        assert _sample(metrics, "process_open_fds")

        # The same content written again (a touch, an editor's second write): no reload.
        config.write_text(config.read_text() + "\n# a comment changes nothing\n")
        running.proc.send_signal(signal.SIGHUP)
        await _until(running, "config unchanged; not reloaded", 1)
        assert _count(running, "config reloaded") == 0

        _edit(config, logging={"level": "DEBUG", "access_log": True})
        running.proc.send_signal(signal.SIGHUP)
        await _until(running, "config reloaded", 1)
        reloaded = next(line for line in running.lines if line.get("msg") == "config reloaded")
        second = reloaded["config"]
        assert second != first and reloaded["previous_config"] == first
        assert reloaded["changed"] == ["logging.level"]

        _edit(config, listen={"port": "not a port"})
        running.proc.send_signal(signal.SIGHUP)
        await _until(running, "config reload failed; keeping the running config", 1)
        failed = next(x for x in running.lines if str(x.get("msg")).startswith("config reload failed"))
        assert failed["config"] == second
        status, ready = await _admin_get(admin, "/readyz")
        assert status == 200 and f'"config": "{second}"' in ready
        _, metrics = await _admin_get(admin, "/metrics")
        assert _sample(metrics, "authproxy_config_info") == [f'authproxy_config_info{{hash="{second}"}} 1.0']
        assert _sample(metrics, "authproxy_config_last_reload_successful") == [
            "authproxy_config_last_reload_successful 0.0"
        ]
        assert 'authproxy_config_reloads_total{result="failed"} 1.0' in metrics
    finally:
        await _stop(running)
