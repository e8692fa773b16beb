"""The listener accepts by the turn (`fastpath.listener.Acceptor`): at most
`ACCEPTS_PER_TURN` connections each time the loop finds the listening socket readable,
the rest waiting in the kernel's queue. Under both loops every queued connection is made
in the end, in turns of that share; through a real process, a burst many times the share
is served whole by both doors, with the admin port answering throughout."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import uvloop
import yaml
from aiohttp.test_utils import unused_port

from proxy.fastpath.listener import ACCEPTS_PER_TURN, Acceptor
from tests.support import Recorder, config_dict
from tests.test_process import start, upstream

__all__ = ["upstream"]  # a fixture

# Not a timing assertion: how long the test waits for what must come before failing.
PATIENCE = 60.0


class _Recorded(asyncio.Protocol):
    def __init__(self, made: list[_Recorded]) -> None:
        self.made = made
        self.received = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.received += data
        assert self.transport is not None
        self.transport.write(data)


async def _a_share_per_turn() -> None:
    listening = socket.create_server(("127.0.0.1", 0), backlog=512)
    made: list[_Recorded] = []
    acceptor = Acceptor(listening, lambda: _Recorded(made))
    extra = 5
    clients = []
    try:
        for _ in range(3 * ACCEPTS_PER_TURN + extra):
            # The handshake completes in the kernel: each one waits in the queue.
            clients.append(socket.create_connection(listening.getsockname()[:2], timeout=10))
        # Called as the loop would when the socket is readable: a share each time.
        assert [acceptor.accept() for _ in range(5)] == [ACCEPTS_PER_TURN] * 3 + [extra, 0]
        for _ in range(1000):
            if len(made) == len(clients):
                break
            await asyncio.sleep(0)
        assert len(made) == len(clients)
        # Each is a live connection of the loop: what a client sends comes back.
        for n, client in enumerate(clients):
            client.sendall(b"%d;" % n)
        for n, client in enumerate(clients):
            expected = b"%d;" % n
            got = b""
            while len(got) < len(expected):
                got += await asyncio.get_running_loop().run_in_executor(None, client.recv, 64)
            assert got == expected
        assert sorted(p.received for p in made) == sorted(b"%d;" % n for n in range(len(clients)))
    finally:
        acceptor.close()
        for client in clients:
            client.close()
        for protocol in made:
            assert protocol.transport is not None
            protocol.transport.close()
        await asyncio.sleep(0)
    assert listening.fileno() == -1


@pytest.mark.parametrize(
    "new_loop",
    [asyncio.new_event_loop, uvloop.new_event_loop],
    ids=["asyncio", "uvloop"],
)
def test_the_acceptor_takes_a_share_per_turn_and_makes_every_connection(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    loop = new_loop()
    try:
        loop.run_until_complete(_a_share_per_turn())
    finally:
        loop.close()


async def _get(port: int, n: int, connected: asyncio.Event, opened: list[int]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        opened.append(n)
        # Every client connects before any sends: the burst waits in the listener's
        # queue and its first turns whole.
        await connected.wait()
        writer.write(f"GET /public/{n} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp-door"])
async def test_a_burst_many_times_a_turns_share_is_served_whole(
    tmp_path: Path, upstream: tuple[str, Recorder], fast_path: bool
) -> None:
    burst = 16 * ACCEPTS_PER_TURN
    port, admin = unused_port(), unused_port()
    raw = config_dict(
        upstream[0], listen={"port": port, "fast_path": fast_path}, admin={"port": admin}
    )
    raw["upstream"]["read_timeout"] = raw["upstream"]["connect_timeout"] = PATIENCE
    raw["clerk"]["secret_key"] = "${CLERK_SECRET_KEY}"  # start() sets it
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    running = await start(config, port, admin)
    try:
        connected = asyncio.Event()
        opened: list[int] = []
        clients = [asyncio.create_task(_get(port, n, connected, opened)) for n in range(burst)]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PATIENCE)) as s:
            for _ in range(int(PATIENCE / 0.05)):
                if len(opened) == burst:
                    break
                await asyncio.sleep(0.05)
            assert len(opened) == burst
            async with s.get(running.admin_url("/healthz")) as resp:
                assert resp.status == 200
            connected.set()
            answers = await asyncio.wait_for(asyncio.gather(*clients), PATIENCE)
            async with s.get(running.admin_url("/healthz")) as resp:
                assert resp.status == 200
        for n, answer in enumerate(answers):
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b'"/public/%d"' % n in body, body
        assert running.proc.returncode is None
        assert not [line for line in running.lines if line.get("level") == "error"]
    finally:
        running.proc.terminate()
        await running.proc.wait()


class _OutOfDescriptors(socket.socket):
    """A listening socket whose accept() fails as it does past RLIMIT_NOFILE."""

    def accept(self) -> tuple[socket.socket, Any]:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


async def test_out_of_descriptors_the_acceptor_rests_instead_of_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listening = _OutOfDescriptors(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    acceptor = Acceptor(listening, asyncio.Protocol)
    client = socket.create_connection(listening.getsockname()[:2], timeout=10)
    try:
        with caplog.at_level(logging.WARNING, logger="proxy"):
            assert acceptor.accept() == 0
        assert [r.getMessage() for r in caplog.records] == [
            f"cannot accept a connection: {os.strerror(errno.EMFILE)}"
        ]
        # Its reader is off until the rest is over: the loop does not call it again
        # although a connection waits.
        assert not asyncio.get_running_loop().remove_reader(listening.fileno())
    finally:
        acceptor.close()
        client.close()
    assert listening.fileno() == -1
