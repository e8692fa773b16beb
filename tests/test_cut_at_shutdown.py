"""A request the drain cuts at its deadline is the proxy's doing, not the client's: through
the CLI, on both doors, its access-log line says 503 (not nginx's 499, "client closed
request") and a warning says the deadline cut it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support import Recorder
from tests.test_process import start, upstream, write_config

__all__ = ["upstream"]  # a fixture


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
async def test_a_request_cut_at_the_drain_deadline_is_logged_503(
    tmp_path: Path, upstream: tuple[str, Recorder], fast_path: bool
) -> None:
    url, recorder = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url, shutdown={"grace_period": 0.5, "delay": 0})
    raw = yaml.safe_load(config.read_text())
    raw["listen"]["fast_path"] = fast_path
    config.write_text(yaml.safe_dump(raw))
    running = await start(config, port, admin)
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(running.url("/public/slow?delay=30")))
        for _ in range(200):
            if recorder.seen:
                break
            await asyncio.sleep(0.02)
        assert recorder.seen, "the slow request never reached the upstream"
        running.proc.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ClientError):
            await slow
    assert await asyncio.wait_for(running.proc.wait(), 15) == 0
    await asyncio.wait_for(running._reader, 10)
    access = [line for line in running.lines if line.get("msg") == "request"]
    assert [(a["route"], a["status"]) for a in access] == [("public", 503)], running.lines
    (cut,) = [line for line in running.lines if line.get("msg", "").startswith("shutdown deadline")]
    assert cut["level"] == "warning" and cut["connections"] == 1
