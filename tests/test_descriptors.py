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

from proxy.core.timeouts import ConnectionPolicy
from tests.support import Recorder, make_config
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


@pytest.mark.parametrize(
    ("soft", "policy", "ceiling"),
    [
        (1024, ConnectionPolicy(), 384),  # two descriptors each, after a reserve of 256
        (1 << 20, ConnectionPolicy(), ((1 << 20) - 256) // 2),
        (1024, ConnectionPolicy(descriptor_reserve=24), 500),
        (1024, ConnectionPolicy(max_client_connections=100), 100),
        # More than the descriptors hold is not granted: accept() would fail for all.
        (1024, ConnectionPolicy(max_client_connections=10_000), 384),
        # The reserve takes them all: every client is refused (and the line is a warning).
        (200, ConnectionPolicy(), 0),
    ],
)
def test_the_client_ceiling_keeps_the_reserve(
    soft: int, policy: ConnectionPolicy, ceiling: int
) -> None:
    assert policy.client_ceiling(soft) == ceiling


def test_the_ceiling_keys_are_read_from_connections() -> None:
    config = make_config(
        connections={"max_client_connections": 5000, "descriptor_reserve": 512}
    )
    assert config.connections.max_client_connections == 5000
    assert config.connections.descriptor_reserve == 512
    assert make_config().connections == ConnectionPolicy()
