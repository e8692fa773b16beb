"""The client-facing listener, for both doors: accepts each connection as a
`frontdoor.FrontDoor` (fast path) or straight into aiohttp's protocol (`fast_path: false`,
or an https upstream) wrapped in `doorway.Guarded`; sweeps them all against the one
timeout policy (`connections:`), and drains them on shutdown.

The drain keeps its word: the listener closes, idle connections close, and everything in
flight — requests, uploads, WebSockets, Socket.IO — goes on flowing both ways until it
ends or the deadline comes; then WebSockets get 1001 and what is left is cut. aiohttp's
own shutdown (which stops reading from every connection at once) only runs after that,
when nothing is left for it to drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

from aiohttp import web

from proxy.core.timeouts import ConnectionPolicy
from proxy.fastpath.doorway import Ceiling, Doorway
from proxy.fastpath.frontdoor import FrontDoor
from proxy.request.app import Proxy

# How long WebSockets get for their closing handshake at the end of the grace period.
CLOSE_HANDSHAKE: Final = 0.5


def backstop_keepalive(policy: ConnectionPolicy) -> float:
    """aiohttp's own keep-alive timer, behind ours: it also runs while a head arrives, so
    it must outlast idle + head; with either off, aiohttp's default."""
    if policy.idle_timeout > 0 and policy.head_timeout > 0:
        return policy.idle_timeout + policy.head_timeout + 5.0
    return 3630.0


class FrontDoorServer:
    """The listener and its connections; `fast_path` False hands every connection to
    aiohttp at once."""

    def __init__(
        self,
        proxy: Proxy,
        runner: web.AppRunner,
        policy: ConnectionPolicy,
        ceiling: Ceiling,
        *,
        fast_path: bool,
    ) -> None:
        server = runner.server
        assert server is not None, "runner.setup() first"
        self.proxy = proxy
        self.fast_path = fast_path
        self.doorway = Doorway(policy, proxy.metrics, server, ceiling)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._draining = False

    @property
    def connections(self) -> set[object]:
        return set(self.doorway.connections)

    async def start(self, host: str, port: int, *, reuse_port: bool, backlog: int = 1024) -> None:
        loop = asyncio.get_running_loop()
        doorway, proxy = self.doorway, self.proxy
        if self.fast_path:
            self._server = await loop.create_server(
                lambda: FrontDoor(proxy, doorway),
                host,
                port,
                reuse_port=reuse_port or None,
                backlog=backlog,
            )
        else:
            self._server = await loop.create_server(
                doorway.guarded, host, port, reuse_port=reuse_port or None, backlog=backlog
            )
        self._sweeper = asyncio.create_task(self._sweep())

    @property
    def sockets(self) -> list[tuple[str, int]]:
        assert self._server is not None
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def _sweep(self) -> None:
        while True:
            # A reload's policy holds for connections made after it.
            self.doorway.policy = policy = self.proxy.runtime.config.connections
            await asyncio.sleep(policy.tick())
            now = time.monotonic()
            self.doorway.sweep(now, draining=self._draining)
            if self.fast_path:
                self.proxy.fast_pool.sweep(now)

    async def drain(self, deadline: float) -> None:
        """Stop accepting; close idle connections (and each one as it turns idle); let
        the rest flow until `deadline` (`time.monotonic()`); then 1001 to WebSockets and
        cut what is left."""
        if self._server is not None:
            self._server.close()
        # Answers from now on say `Connection: close` (both doors read this).
        self.proxy.draining = True
        self._draining = True
        doorway = self.doorway
        doorway.sweep(time.monotonic(), draining=True)
        while doorway.connections and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            doorway.sweep(time.monotonic(), draining=True)
        if self.proxy.ws_registry:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proxy.ws_registry.close_all(), CLOSE_HANDSHAKE)
        doorway.abort_all()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            await self._server.wait_closed()


async def serve(
    proxy: Proxy,
    runner: web.AppRunner,
    host: str,
    port: int,
    *,
    reuse_port: bool,
    fast_path: bool = True,
    ceiling: Ceiling | None = None,
) -> FrontDoorServer:
    """Listen on host:port in front of `runner`'s aiohttp server, with the fast path
    when `fast_path`, its connections counted against `ceiling` (the process's, shared
    by its listeners; without one, a ceiling of its own that nothing configures)."""
    policy = proxy.runtime.config.connections
    front = FrontDoorServer(proxy, runner, policy, ceiling or Ceiling(), fast_path=fast_path)
    await front.start(host, port, reuse_port=reuse_port)
    return front
