"""Slowloris against both doors and with `fast_path: false`: every idle, slow-head and
slow-body connection is closed by its configured timeout (`connections:`), counted by
reason, while normal traffic goes on unaffected; WebSockets idle out; and a client
address cannot hold more than `connections.max_per_address` connections.

Timeouts are short here (a second or so); the sweep looks every quarter of the shortest.
The bounds checked are "not before the timeout" and "by the timeout plus a few sweeps"
(generous: the suite shares a small machine)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from proxy.request.app import PROXY, create_app
from tests.support import FastPathServer, StubVerifier, make_config

IDLE, HEAD, GRACE, RATE, WS_IDLE = 1.5, 1.0, 1.0, 1000, 1.5
CONNECTIONS = {
    "idle_timeout": IDLE,
    "head_timeout": HEAD,
    "body_grace": GRACE,
    "min_body_rate": RATE,
    "websocket_idle_timeout": WS_IDLE,
}
# A close may come up to a sweep later than its timeout; the rest is the machine's slack.
LATE = 2.0
DOORS = ["fast", "aiohttp-after-fast", "fast_path-false"]


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"length": len(await request.read())})

    app = web.Application()
    app.router.add_get("/public/ws", ws_echo)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


Start = Callable[..., Awaitable[FastPathServer]]


@pytest.fixture
async def start_proxy(upstream_url: str) -> AsyncIterator[Start]:
    started: list[FastPathServer] = []

    async def start(*, fast_path: bool, **connections: Any) -> FastPathServer:
        config = make_config(upstream_url, connections={**CONNECTIONS, **connections})
        server = FastPathServer(create_app(config, verifier=StubVerifier()), fast_path=fast_path)
        await server.start_server()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


def closed_count(server: FastPathServer, reason: str) -> float:
    value = server.app[PROXY].metrics.registry.get_sample_value(
        "authproxy_connections_closed_total", {"reason": reason}
    )
    return value or 0.0


@dataclass
class Outcome:
    seconds: float  # from the start of the phase that timed out to the close
    answer: bytes  # what the proxy wrote before closing


async def read_until_closed(reader: asyncio.StreamReader, started: float) -> Outcome:
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), 30):
            data += chunk
    return Outcome(time.monotonic() - started, data)


async def open_raw(server: FastPathServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert server.port is not None
    return await asyncio.open_connection("127.0.0.1", server.port)


async def handed_off(server: FastPathServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection aiohttp holds: with the fast path on, a request with a body is its."""
    reader, writer = await open_raw(server)
    writer.write(b"POST /public/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return reader, writer


async def idle(server: FastPathServer, door: str) -> Outcome:
    reader, writer = await (
        handed_off(server) if door == "aiohttp-after-fast" else open_raw(server)
    )
    outcome = await read_until_closed(reader, time.monotonic())
    writer.close()
    return outcome


async def slow_head(server: FastPathServer, door: str) -> Outcome:
    reader, writer = await (
        handed_off(server) if door == "aiohttp-after-fast" else open_raw(server)
    )
    started = time.monotonic()
    writer.write(b"GET /public/x HTTP/1.1\r\nHost: x\r\n")

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(100):
                await asyncio.sleep(0.2)
                writer.write(b"X-%d: y\r\n" % i)
                await writer.drain()

    dripping = asyncio.ensure_future(drip())
    outcome = await read_until_closed(reader, started)
    dripping.cancel()
    writer.close()
    return outcome


async def slow_body(server: FastPathServer, door: str) -> Outcome:
    reader, writer = await open_raw(server)
    writer.write(b"POST /public/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    started = time.monotonic()

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                writer.write(b"0123456789")  # 50 B/s: far below the minimum rate
                await writer.drain()
                await asyncio.sleep(0.2)

    dripping = asyncio.ensure_future(drip())
    outcome = await read_until_closed(reader, started)
    dripping.cancel()
    writer.close()
    return outcome


async def normal_traffic(server: FastPathServer, stop: asyncio.Event) -> list[int]:
    statuses: list[int] = []
    async with aiohttp.ClientSession(str(server.make_url(""))) as session:
        while not stop.is_set():
            async with session.get("/public/x") as resp:
                await resp.read()
                statuses.append(resp.status)
            async with session.post("/public/echo", data=b"z" * 20_000) as resp:
                assert (await resp.json())["length"] == 20_000
                statuses.append(resp.status)
            await asyncio.sleep(0.05)
    return statuses


@pytest.mark.parametrize("door", DOORS)
async def test_slowloris_connections_close_on_time_and_normal_traffic_flows(
    start_proxy: Start, door: str
) -> None:
    server = await start_proxy(fast_path=door != "fast_path-false")
    stop = asyncio.Event()
    traffic = asyncio.ensure_future(normal_traffic(server, stop))
    idles, heads, bodies = await asyncio.gather(
        asyncio.gather(*(idle(server, door) for _ in range(3))),
        asyncio.gather(*(slow_head(server, door) for _ in range(3))),
        asyncio.gather(*(slow_body(server, door) for _ in range(3))),
    )
    stop.set()
    statuses = await traffic
    for outcome in idles:
        assert outcome.answer == b""  # an idle connection is just closed
        assert IDLE - 0.1 <= outcome.seconds <= IDLE + LATE
    for outcome in heads:
        assert outcome.answer.startswith(b"HTTP/1.1 408 ")
        assert b'"code":"request_timeout"' in outcome.answer
        assert HEAD - 0.1 <= outcome.seconds <= HEAD + LATE
    for outcome in bodies:
        assert outcome.answer.startswith(b"HTTP/1.1 408 ")
        assert GRACE - 0.1 <= outcome.seconds <= GRACE + LATE
    assert closed_count(server, "head_timeout") == 3
    assert closed_count(server, "body_rate") == 3
    # The idle ones, and the normal client's keep-alive connection is not among them.
    assert closed_count(server, "idle") == 3
    assert statuses and set(statuses) == {200}


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "fast_path-false"])
async def test_websockets_idle_out_with_a_close_frame_and_busy_ones_stay(
    start_proxy: Start, fast_path: bool
) -> None:
    server = await start_proxy(fast_path=fast_path)
    async with aiohttp.ClientSession(str(server.make_url(""))) as session:
        async with (
            session.ws_connect("/public/ws", autoclose=False) as quiet,
            session.ws_connect("/public/ws") as chatty,
        ):
            started = time.monotonic()
            for _ in range(int((WS_IDLE + 1.5) / 0.25)):
                await chatty.send_str("ping")
                assert await chatty.receive_str() == "ping"
                await asyncio.sleep(0.25)
            msg = await asyncio.wait_for(quiet.receive(), 10)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
            assert time.monotonic() - started <= WS_IDLE + LATE + 1.5
            await chatty.send_str("still here")
            assert await chatty.receive_str() == "still here"
    assert closed_count(server, "websocket_idle") == 1


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "fast_path-false"])
async def test_a_client_address_holds_at_most_max_per_address_connections(
    start_proxy: Start, fast_path: bool
) -> None:
    server = await start_proxy(fast_path=fast_path, max_per_address=2)
    held = [await open_raw(server) for _ in range(2)]
    reader, writer = await open_raw(server)
    refused = await read_until_closed(reader, time.monotonic())
    assert refused.answer.startswith(b"HTTP/1.1 503 ")
    assert b'"code":"too_many_connections"' in refused.answer
    assert b"Retry-After: 1" in refused.answer
    writer.close()
    assert closed_count(server, "per_address_limit") == 1
    # One of the two goes: room for one more, which is served.
    held[0][1].close()
    await asyncio.sleep(0.2)
    reader, writer = await open_raw(server)
    writer.write(b"GET /public/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    writer.close()
    held[1][1].close()
