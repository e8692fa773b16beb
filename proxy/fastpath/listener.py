"""The client-facing listener, for both doors: accepts each connection as a
`frontdoor.FrontDoor` (fast path) or straight into aiohttp's protocol (`fast_path: false`,
or an https upstream) wrapped in `doorway.Guarded`; sweeps them all against the one
timeout policy (`connections:`), and drains them on shutdown.

It accepts by the turn (`Acceptor`): at most `ACCEPTS_PER_TURN` connections each time the
loop finds a listening socket readable, the rest waiting in the kernel's queue, so that a
reconnect wave's thousands of connections are taken in over many turns of the loop
instead of one (uvloop's and asyncio's servers accept everything queued at once).

The drain keeps its word: the listener closes, idle connections close, and everything in
flight — requests, uploads, WebSockets, Socket.IO — goes on flowing both ways until it
ends or the deadline comes; then WebSockets get 1001 and what is left is cut. aiohttp's
own shutdown (which stops reading from every connection at once) only runs after that,
when nothing is left for it to drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from proxy.core.background import Background
from proxy.core.timeouts import ConnectionPolicy
from proxy.fastpath.doorway import Ceiling, Doorway
from proxy.fastpath.frontdoor import FrontDoor
from proxy.request.app import Proxy

log = logging.getLogger("proxy")

# How long WebSockets get for their closing handshake at the end of the grace period.
CLOSE_HANDSHAKE: Final = 0.5

# Connections accepted per listening socket each time the loop finds it readable. uvloop
# accepts everything queued in one turn; taken 32 at a time (with the hand-offs deferred,
# `doorway.HANDOFFS_PER_TURN`), a 5,000-socket reconnect wave connected at 79-201 % of
# the direct rate in seven runs (67-165 % with uvloop's accepts) and its worst loop stall
# was 50-131 ms, median 71 (53-150, median 94). Alone, without the deferred hand-offs, it
# did not help (316 ms against 141). 16 and 64 a turn: 84-197 and 42-154 ms, three runs
# each; docs/performance.md, issue 29.
ACCEPTS_PER_TURN: Final = 32
# The kernel's queue of connections not yet accepted, where a wave waits its turns: a
# client that finds it full has its SYN dropped and retries a second later. The kernel
# caps it at net.core.somaxconn (4,096 by default since Linux 5.4).
BACKLOG: Final = 65535
# accept() out of descriptors or kernel memory: the listener rests this long (as
# asyncio's servers do) instead of spinning on a socket that stays readable.
ACCEPT_RETRY: Final = 1.0
# What accept() raises for a connection that failed before it was accepted (accept(2):
# treat as "try again"): the next one is taken.
_GONE: Final = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH}
)


def backstop_keepalive(policy: ConnectionPolicy) -> float:
    """aiohttp's own keep-alive timer, behind ours: it also runs while a head arrives, so
    it must outlast idle + head; with either off, aiohttp's default."""
    if policy.idle_timeout > 0 and policy.head_timeout > 0:
        return policy.idle_timeout + policy.head_timeout + 5.0
    return 3630.0


class Acceptor:
    """One listening socket, accepted from by the turn: the loop calls `accept` when the
    socket is readable (level-triggered, so what is left waits for the next turn), and
    each connection becomes a transport of the running loop with `factory`'s protocol."""

    __slots__ = ("_connecting", "_factory", "_loop", "_resting", "sock")

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        self.sock = sock
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        self._resting: asyncio.TimerHandle | None = None
        self._connecting = Background()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self.accept)

    def accept(self) -> int:
        """Accept up to `ACCEPTS_PER_TURN` connections; how many."""
        sock, loop = self.sock, self._loop
        accepted = 0
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _GONE:
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: the descriptor budget (`Ceiling`)
                # keeps a reserve so this should not happen; if it does, rest.
                log.warning(
                    "cannot accept a connection: %s", exc.strerror, extra={"errno": exc.errno}
                )
                loop.remove_reader(sock.fileno())
                self._resting = loop.call_later(ACCEPT_RETRY, self._resume)
                break
            accepted += 1
            conn.setblocking(False)
            self._connecting.spawn(self._connect(conn))
        return accepted

    async def _connect(self, conn: socket.socket) -> None:
        # A coroutine in both loops; the protocol's connection_made runs a turn later.
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:
            conn.close()

    def _resume(self) -> None:
        self._resting = None
        self._loop.add_reader(self.sock.fileno(), self.accept)

    def close(self) -> None:
        """Stop accepting; what waits in the kernel's queue is reset when the socket closes."""
        if self.sock.fileno() < 0:
            return
        if self._resting is not None:
            self._resting.cancel()
            self._resting = None
        else:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def listening_sockets(
    host: str, port: int, *, reuse_port: bool, backlog: int
) -> list[socket.socket]:
    """Bound and listening, one per address `host` resolves to (as `loop.create_server`
    binds them); an OSError closes what was opened."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(infos):
            sockets.append(
                socket.create_server(
                    address,
                    family=family,
                    backlog=backlog,
                    reuse_port=reuse_port,
                )
            )
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


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
        self._acceptors: list[Acceptor] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._draining = False

    @property
    def connections(self) -> set[object]:
        return set(self.doorway.connections)

    async def start(
        self, host: str, port: int, *, reuse_port: bool, backlog: int = BACKLOG
    ) -> None:
        doorway, proxy = self.doorway, self.proxy
        factory: Callable[[], asyncio.Protocol] = (
            (lambda: FrontDoor(proxy, doorway)) if self.fast_path else doorway.guarded
        )
        sockets = await listening_sockets(host, port, reuse_port=reuse_port, backlog=backlog)
        self._acceptors = [Acceptor(sock, factory) for sock in sockets]
        self._sweeper = asyncio.create_task(self._sweep())

    @property
    def sockets(self) -> list[tuple[str, int]]:
        return [a.sock.getsockname()[:2] for a in self._acceptors if a.sock.fileno() >= 0]

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
        for acceptor in self._acceptors:
            acceptor.close()
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
