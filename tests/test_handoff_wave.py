"""A wave of connections the fast path hands to aiohttp, through a real process: aiohttp
takes at most `HANDOFFS_PER_TURN` of them per turn of the event loop, the rest wait with
reading paused and no aiohttp protocol made (`fastpath.doorway`). Every one is answered, in order, what each client
sent after its first head reaches aiohttp behind it, a client that leaves while waiting
costs the others nothing, and the admin port answers throughout."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiohttp.test_utils import unused_port

from proxy.core.timeouts import ConnectionClock, ConnectionPolicy
from proxy.fastpath.doorway import HANDOFFS_PER_TURN, Ceiling, Doorway
from proxy.observe.metrics import Metrics
from tests.support import config_dict
from tests.test_process import ROOT, Running

WAVE = 24 * HANDOFFS_PER_TURN
LEAVERS = 20
# Not a timing assertion: how long the test waits for what must come before failing.
PATIENCE = 60.0


def _upstream() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.path, headers={"X-Method": request.method})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _answer(reader: asyncio.StreamReader, head_only: bool) -> tuple[int, str, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    line, *fields = head.split("\r\n")[:-2]
    headers = {n.strip().lower(): v.strip() for n, _, v in (f.partition(":") for f in fields)}
    size = 0 if head_only else int(headers.get("content-length", "0"))
    return int(line.split()[1]), headers.get("x-method", ""), await reader.readexactly(size)


async def _client(port: int, n: int) -> list[tuple[int, str, bytes]]:
    """A HEAD (aiohttp's: the fast path hands the connection over), then, once answered, a
    GET on the same connection, which aiohttp now reads."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"HEAD /public/{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        first = await _answer(reader, head_only=True)
        writer.write(f"GET /public/{n}/again HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return [first, await _answer(reader, head_only=False)]
    finally:
        writer.close()


async def _leaver(port: int) -> None:
    """Sends a head aiohttp must read, and leaves before it is answered."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD /public/gone HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    writer.transport.abort()


async def test_a_wave_of_hand_offs_is_read_a_share_per_turn_and_every_client_answered(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    upstream = await aiohttp_server(_upstream())
    port, admin = unused_port(), unused_port()
    raw = config_dict(
        str(upstream.make_url("")).rstrip("/"), listen={"port": port}, admin={"port": admin}
    )
    raw["upstream"]["read_timeout"] = raw["upstream"]["connect_timeout"] = PATIENCE
    raw["clerk"]["secret_key"] = "${KEY}"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.process.cli",
        "run",
        "--config",
        str(tmp_path / "c.yaml"),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "KEY": "sk_test_unit"},
    )
    running = Running(proc, port, admin)
    try:
        await running.wait_log("serving")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PATIENCE)) as s:
            admin_answers: list[int] = []
            done = asyncio.Event()

            async def probe() -> None:
                while not done.is_set():
                    async with s.get(running.admin_url("/healthz")) as resp:
                        admin_answers.append(resp.status)
                    await asyncio.sleep(0.01)

            prober = asyncio.create_task(probe())
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(_client(port, n) for n in range(WAVE)),
                    *(_leaver(port) for _ in range(LEAVERS)),
                ),
                PATIENCE,
            )
            done.set()
            await prober
        answered = results[:WAVE]
        for n, pair in enumerate(answered):
            assert pair == [(200, "HEAD", b""), (200, "GET", f"/public/{n}/again".encode())]
        assert admin_answers and set(admin_answers) == {200}
        assert proc.returncode is None
        assert not [line for line in running.lines if line.get("level") == "error"]
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


class _Transport(asyncio.Transport):
    """Enough of a transport for the doorway: what was asked of it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.closing = False
        self.protocol: asyncio.BaseProtocol | None = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Aiohttp(asyncio.Protocol):
    """Stands in for aiohttp's protocol: what reached it."""

    def __init__(self, made: list[_Aiohttp]) -> None:
        made.append(self)
        self.events: list[object] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append(transport)

    def data_received(self, data: bytes) -> None:
        self.events.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")


async def test_a_hand_off_past_the_turns_share_waits_with_no_aiohttp_protocol_made() -> None:
    made: list[_Aiohttp] = []
    doorway = Doorway(ConnectionPolicy(), Metrics(), lambda: _Aiohttp(made), Ceiling())
    extra = 5
    transports = [_Transport() for _ in range(HANDOFFS_PER_TURN + extra)]
    handed = []
    for n, transport in enumerate(transports):
        old = _Held()
        assert doorway.admit(old, transport, "10.0.0.1")
        clock = ConnectionClock(ConnectionPolicy(), 0.0)
        handed.append(doorway.hand_off(old, transport, clock, "10.0.0.1", b"GET /%d" % n))
    # This turn's share is taken at once; the rest are paused, aiohttp knows nothing of them.
    assert len(made) == HANDOFFS_PER_TURN
    assert [g.inner for g in handed[HANDOFFS_PER_TURN:]] == [None] * extra
    assert all(t.calls == ["pause"] for t in transports[HANDOFFS_PER_TURN:])
    assert all(t.protocol is g for t, g in zip(transports, handed, strict=True))
    # One leaves while it waits: counted out, and never handed to aiohttp.
    gone = transports[HANDOFFS_PER_TURN]
    gone.closing = True
    handed[HANDOFFS_PER_TURN].connection_lost(None)
    assert len(doorway.connections) == HANDOFFS_PER_TURN + extra - 1
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(made) == HANDOFFS_PER_TURN + extra - 1
    assert gone.calls == ["pause"]
    for n, guarded in enumerate(handed):
        if n == HANDOFFS_PER_TURN:
            assert guarded.inner is None
            continue
        inner = guarded.inner
        assert isinstance(inner, _Aiohttp)
        # aiohttp sees the connection made, then its head, as if it had read it itself.
        assert inner.events == [transports[n], b"GET /%d" % n]
        if n > HANDOFFS_PER_TURN:
            assert transports[n].calls == ["pause", "resume"]
    # The process's count comes back to nothing as they close.
    for n, guarded in enumerate(handed):
        if n != HANDOFFS_PER_TURN:
            guarded.connection_lost(None)
    assert not doorway.connections


class _Held:
    """The fast path's side of a connection before its hand-off."""

    def __init__(self) -> None:
        self.clock = ConnectionClock(ConnectionPolicy(), 0.0)

    def expire(self, reason: str) -> None:
        raise AssertionError("not swept here")

    def abort(self) -> None:
        raise AssertionError("not cut here")
