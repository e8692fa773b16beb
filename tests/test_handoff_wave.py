"""A wave of connections the fast path hands to aiohttp, through a real process: aiohttp
reads at most `HANDOFFS_PER_TURN` of them per turn of the event loop, the rest wait with
reading paused (`fastpath.doorway`). Every one is answered, in order, what each client
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

from proxy.fastpath.doorway import HANDOFFS_PER_TURN
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
        sys.executable, "-m", "proxy.process.cli", "run", "--config", str(tmp_path / "c.yaml"),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
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
