"""What a closed connection leaves for the cyclic collector (issue 29): nothing of the
proxy's. A connection whose objects hold each other (the byte relay's two legs and their
splice, a transport and its protocol, a head parser and its llhttp parser) is freed only
by a full collection, which walks every open socket on the loop's thread: 5,000 sockets
closed at once (a deploy of the upstream) left 115,000 objects to it and a 260-350 ms
stall. Freed by reference counting, each socket costs its own close and nothing later.

Through the proxy's own listener (fast path on), the real request path, python-socketio
behind it: Socket.IO over WebSocket (the byte relay and the aiohttp relay), REST on
keep-alive connections, a polling handshake, then everything closed."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.config import model as config
from proxy.request.app import PROXY
from tests.support import FastPathServer
from tests.support_socketio import SioUpstream, TokenBook, proxy_app, real_app_available

SOCKETS = 12


# What a connection is made of: its listener's, parser's, relay's and clock's objects
# (garbage other tests left behind, collected now, is not this test's).
_CONNECTION_PARTS = ("proxy.fastpath.", "proxy.http.", "proxy.realtime.", "proxy.core.timeouts")


def _ours(objects: list[object]) -> list[str]:
    """The garbage a connection made: the proxy's parts of one, and the llhttp parsers
    they held (the test's client and upstream make garbage of their own)."""
    names = []
    for o in objects:
        kind = type(o)
        if kind.__module__.startswith(_CONNECTION_PARTS) or kind.__name__ in {
            "HttpRequestParser",
            "HttpResponseParser",
        }:
            names.append(f"{kind.__module__}.{kind.__qualname__}")
    return sorted(set(names))


async def _socketio(session: aiohttp.ClientSession, url: str, token: str | None) -> None:
    async with session.ws_connect(url + "/socket.io/?EIO=4&transport=websocket") as ws:
        assert (await ws.receive_str(timeout=10)).startswith("0")
        await ws.send_str("40" + json.dumps({"token": token} if token else {}))
        assert (await ws.receive_str(timeout=10)).startswith("40")


# Deflate towards the upstream takes the socket off the byte relay (`websocket`).
@pytest.mark.parametrize(
    "settings",
    [config.WebSocket(), config.WebSocket(upstream_compression=True)],
    ids=["byte-relay", "aiohttp-relay"],
)
async def test_closed_connections_leave_no_cyclic_garbage(
    aiohttp_server: Callable[..., Awaitable[TestServer]], settings: config.WebSocket
) -> None:
    if why := real_app_available():
        pytest.skip(why)
    upstream = SioUpstream()
    up = await aiohttp_server(upstream.app())
    app = proxy_app("app", up.make_url("/"), TokenBook(), settings)
    server = FastPathServer(app, host="127.0.0.1", fast_path=True)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            async with aiohttp.ClientSession() as session:
                await asyncio.gather(
                    *(_socketio(session, url, "good" if i % 2 else None) for i in range(SOCKETS))
                )
                for _ in range(3):  # fast-path requests on one kept-alive connection
                    async with session.get(url + "/public/x") as resp:
                        await resp.read()
                async with session.get(url + "/socket.io/?EIO=4&transport=polling") as resp:
                    assert resp.status == 200, await resp.text()
            metrics = app[PROXY].metrics
            for _ in range(500):
                if metrics.websocket_connections._value.get() == 0:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the last closes' callbacks
            gc.collect()
            left = _ours(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert left == [], "\n".join(left)
    finally:
        await server.close()
