"""The fast path's listener: accepts client connections as `frontdoor.FrontDoor`s, closes
idle ones and the upstream pool's stale ones once a second, and drains them all on
shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from proxy.fastpath.frontdoor import FrontDoor
from proxy.request.app import Proxy

SWEEP_EVERY: Final = 1.0

AiohttpProtocolFactory = Callable[[], asyncio.Protocol]


class FrontDoorServer:
    """The listener and its connections; `aiohttp_protocol` makes aiohttp's handler."""

    def __init__(self, proxy: Proxy, aiohttp_protocol: AiohttpProtocolFactory) -> None:
        self.proxy = proxy
        self.aiohttp_protocol = aiohttp_protocol
        self.connections: set[FrontDoor] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool, backlog: int = 1024) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FrontDoor(self.proxy, self.connections, self.aiohttp_protocol),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=backlog,
        )
        self._sweeper = asyncio.create_task(self._sweep())

    @property
    def sockets(self) -> list[tuple[str, int]]:
        assert self._server is not None
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.close_idle(now)
            self.proxy.fast_pool.sweep(now)

    async def drain(self, grace: float) -> None:
        """Stop accepting, close idle connections, let exchanges in flight finish within
        `grace`, then cut what is left."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            now = time.monotonic()
            for conn in list(self.connections):
                conn.closing = True
                conn.close_idle(now, force=True)
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()


async def serve(
    proxy: Proxy, runner: web.AppRunner, host: str, port: int, *, reuse_port: bool
) -> FrontDoorServer:
    """Listen on host:port with the fast path in front of `runner`'s aiohttp server."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    front = FrontDoorServer(proxy, server)
    await front.start(host, port, reuse_port=reuse_port)
    return front
