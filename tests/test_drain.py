"""A drain that keeps its word, on the real process (`clerk-auth-proxy run`, SIGTERM):
during the grace period a WebSocket keeps echoing, a Socket.IO ack arrives and a 24 MiB
upload started before the signal completes with 200; WebSockets and Socket.IO get 1001
at the end of the grace period, not at its start; what is still open then is cut; the
process exits within `delay + grace + 1 s` — through both doors."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
import yaml
from aiohttp import WSMsgType, web
from aiohttp.test_utils import unused_port

from tests.support import config_dict
from tests.test_process import Running, start

DELAY, GRACE = 0.5, 4.0
UPLOAD = 24 * 1024 * 1024
CHUNK = 256 * 1024


@pytest.fixture
async def upstream(aiohttp_server: Any) -> str:
    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = web.Application()
    sio.attach(app)

    @sio.event  # type: ignore[misc]
    async def echo(sid: str, data: Any) -> Any:
        return data

    async def upload(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app.router.add_post("/public/upload", upload)
    app.router.add_get("/public/ws", ws_echo)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def slow_body() -> AsyncIterator[bytes]:
    """24 MiB over about two seconds: well inside the grace period, well past its start."""
    block = bytes(range(256)) * (CHUNK // 256)
    for _ in range(UPLOAD // CHUNK):
        yield block
        await asyncio.sleep(0.02)


def expected_digest() -> str:
    block = bytes(range(256)) * (CHUNK // 256)
    digest = hashlib.sha256()
    for _ in range(UPLOAD // CHUNK):
        digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "fast_path-false"])
async def test_grace_keeps_everything_flowing_then_1001_then_exit_on_time(
    tmp_path: Path, upstream: str, session: aiohttp.ClientSession, fast_path: bool
) -> None:
    config = tmp_path / "c.yaml"
    port, admin = unused_port(), unused_port()
    raw = config_dict(
        upstream,
        listen={"port": port, "fast_path": fast_path},
        admin={"port": admin},
        upstream={"max_body_size": "64MiB"},
        shutdown={"delay": DELAY, "grace_period": GRACE},
        connections={"min_body_rate": 0},  # the stuck upload below must reach the deadline
    )
    raw["clerk"]["secret_key"] = "${CLERK_SECRET_KEY}"  # start() sets it: no key in a file
    config.write_text(yaml.safe_dump(raw))
    running = await start(config, port, admin)
    try:
        await _drain(running, session)
    finally:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()


async def _drain(running: Running, session: aiohttp.ClientSession) -> None:
    ws = await session.ws_connect(running.url("/public/ws"), autoclose=False)
    sio = socketio.AsyncClient(reconnection=False)
    sio_gone = asyncio.Event()
    sio.on("disconnect", lambda *_: sio_gone.set())
    await sio.connect(running.url(""), transports=["websocket"])
    assert await sio.call("echo", {"n": 0}, timeout=5) == {"n": 0}
    upload = asyncio.ensure_future(session.post(running.url("/public/upload"), data=slow_body()))

    async def never_ending() -> AsyncIterator[bytes]:
        yield b"x" * 1024
        await asyncio.sleep(3600)

    stuck = asyncio.ensure_future(session.post(running.url("/public/upload"), data=never_ending()))
    await asyncio.sleep(0.3)
    assert not upload.done()

    running.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await running.wait_log("draining")
    await asyncio.sleep(DELAY + 0.3)  # the listener is closed now: the grace period runs

    # Both directions flow: the echo echoes, the ack arrives, again and again.
    echoes = acks = 0
    while time.monotonic() - signalled < DELAY + GRACE - 1.0:
        await ws.send_str(f"m{echoes}")
        assert (await ws.receive()).data == f"m{echoes}"
        echoes += 1
        assert await sio.call("echo", {"n": acks}, timeout=5) == {"n": acks}
        acks += 1
        await asyncio.sleep(0.2)
    assert echoes >= 5 and acks >= 5

    # The upload started before the signal completes, whole.
    resp = await upload
    assert resp.status == 200
    assert await resp.json() == {"size": UPLOAD, "sha256": expected_digest()}
    assert time.monotonic() - signalled > DELAY  # it did outlive the listener

    # The end of the grace period: 1001 on the sockets, the stuck upload cut.
    msg = await asyncio.wait_for(ws.receive(), GRACE + 2)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    closed_at = time.monotonic() - signalled
    assert closed_at >= DELAY + GRACE - 0.2  # at the end, not at the start
    await asyncio.wait_for(sio_gone.wait(), 3)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(stuck, 5)

    code = await asyncio.wait_for(running.proc.wait(), DELAY + GRACE + 5)
    exited = time.monotonic() - signalled
    assert code == 0
    print(f"drain: {echoes} echoes, {acks} acks, 1001 at {closed_at:.2f} s, exit at {exited:.2f} s")
    assert exited <= DELAY + GRACE + 1.0, f"exit {exited:.2f} s after SIGTERM"
    await ws.close()
    await sio.disconnect()
    # The stuck upload was cut by the proxy at the deadline: 503 (docs/spec.md, process
    # life). The 499s this once matched were the WebSocket upgrades' lines, written when
    # their sockets ended; the byte relay writes a socket's line at its 101.
    posts = [line for line in running.lines if line.get("msg") == "request"]
    cut = [line for line in posts if line["method"] == "POST" and line["status"] == 503]
    assert cut, "the stuck upload is counted as cut by the proxy (503)"


def test_the_backstop_ends_a_shutdown_that_overruns() -> None:
    """Whatever hangs in the clean-up, the process is gone at its deadline (exit 1, logged)."""
    code = (
        "import time\n"
        "from proxy.process.server import exit_at\n"
        "exit_at(time.monotonic() + 0.3)\n"
        "time.sleep(30)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20, check=False)
    assert done.returncode == 1
    assert time.monotonic() - started < 10
    assert b"shutdown overran its deadline" in done.stderr
