"""The process takes the descriptors it was granted: started (as many hosts and container
runtimes start it) under a soft RLIMIT_NOFILE of 1,024, `run` raises it to the hard limit,
logs both, and then holds more client connections than 1,024 descriptors would allow."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
from pathlib import Path

import pytest

from tests.support import Recorder
from tests.test_process import ROOT, Running, upstream, write_config

__all__ = ["upstream"]  # a fixture

SOFT = 1024


def _soft_1024() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard))


def _limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


async def test_run_raises_a_soft_limit_of_1024_and_holds_more_connections(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 2 * SOFT + 200:
        pytest.skip(f"this machine's hard limit ({hard}) leaves nothing to raise to")
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "run", "--config", str(config),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "CLERK_SECRET_KEY": "sk_test_unit"}, preexec_fn=_soft_1024,
    )
    running = Running(proc, port, admin)
    writers: list[asyncio.StreamWriter] = []
    try:
        line = await running.wait_log("file descriptors")
        assert (line["soft_before"], line["soft"], line["hard"]) == (SOFT, _limit(proc.pid), hard)
        assert line["soft"] > SOFT
        await running.wait_log("serving")
        # 1,500 client connections, each answered: past what 1,024 descriptors hold.
        ours = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        try:
            for _ in range(1500):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writers.append(writer)
            # The last one is answered (under a soft limit of 1,024 left as it was, the
            # process cannot accept it: no answer at all).
            writers[-1].write(b"GET /public/x HTTP/1.1\r\nHost: t\r\n\r\n")
            await writers[-1].drain()
            status = await asyncio.wait_for(reader.readline(), 10)
            assert status.startswith(b"HTTP/1.1 200"), status
        finally:
            for writer in writers:
                writer.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, ours)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
