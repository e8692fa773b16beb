"""What every client connection shares, whichever door holds it: the listener's set of
live connections, the per-address count, the process's `Ceiling`, the close counter, a
coarse clock, and `Guarded` — aiohttp's protocol for one connection, wrapped so the listener still sees
it (its bytes, its phase, its close).

aiohttp's `RequestHandler` has no head or body timeout and, built by `AppRunner`, a
keep-alive of 3,630 s; a connection it holds is therefore timed here, by the same
`ConnectionClock` the fast path's `FrontDoor` uses (`proxy.core.timeouts`), and swept by
the same listener. The request path reports the phases it alone can see (head done,
body waits and chunks, answered, upgraded) to `clock_of(transport)`.
"""

from __future__ import annotations

import asyncio
import http
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from proxy.core.errors import REQUEST_TIMEOUT, TOO_MANY_CONNECTIONS, ProxyError
from proxy.core.timeouts import (
    CEILING,
    DRAIN_DEADLINE,
    IDLE,
    PER_ADDRESS_LIMIT,
    UPGRADED,
    ConnectionClock,
    ConnectionPolicy,
)
from proxy.http import http1
from proxy.observe.metrics import Metrics

AiohttpProtocolFactory = Callable[[], asyncio.Protocol]

# How long a connection closed with a 408 keeps reading (and dropping) what still comes.
log = logging.getLogger("proxy")

LINGER = 1.0

# Hand-offs aiohttp takes per turn of the event loop. A reconnect wave brings thousands of
# Socket.IO upgrades within a second, and aiohttp's protocol, its parse and its handler
# start cost a few hundred µs each: read all at once, they held the loop (and every REST
# request and `/healthz` with it) for a quarter of a second; the rest wait, reading
# paused and with no aiohttp protocol made yet, for the next turns. Measured at 5,000
# sockets against the same build without it: the wave's worst stall 236-276 ms -> 138 ms
# (32 a turn) and 106 ms (16), and 14.4-14.8 KB a socket instead of 16.4 (aiohttp's
# handshake objects no longer all alive at once). Reading paced, aiohttp's protocol was
# still made (and its connection_made run) for every hand-off at once; made in the
# hand-off's turn too: 188-403 ms (median 236) -> 53-150 ms (median 94), seven runs;
# docs/performance.md, issue 29.
HANDOFFS_PER_TURN = 16


class Held(Protocol):
    """A live client connection as the listener sweeps it."""

    clock: ConnectionClock

    def expire(self, reason: str) -> None:
        """Close the connection for `reason` (counted by the caller)."""
        ...

    def abort(self) -> None: ...


def _refusal_bytes(refusal: ProxyError) -> bytes:
    return http1.simple_response(
        refusal.status,
        http.HTTPStatus(refusal.status).phrase,
        refusal.headers().items(),
        refusal.body(),
        close=True,
    )


TIMED_OUT = _refusal_bytes(
    ProxyError(REQUEST_TIMEOUT, "the request did not arrive within the connection's timeouts")
)
# What aiohttp's parser would answer if it refused the line: plain text (docs/spec.md,
# "Requests refused before routing").
NO_VERSION = http1.simple_response(
    400,
    "Bad Request",
    [("Content-Type", "text/plain; charset=utf-8")],
    b"Bad request line: no HTTP version (HTTP/0.9 is not served)",
    close=True,
)
OVER_LIMIT = _refusal_bytes(
    ProxyError(
        TOO_MANY_CONNECTIONS,
        "this client address holds too many connections to the proxy",
        retry_after=1,
    )
)
FULL = _refusal_bytes(
    ProxyError(
        TOO_MANY_CONNECTIONS,
        "the proxy holds as many client connections as its file descriptors allow",
        retry_after=5,
    )
)


UNLIMITED = sys.maxsize


class Ceiling:
    """The process's client connections against its descriptor budget, one for every
    listener (client and forward-auth), so that the admin port, Clerk, issuers, Redis and
    the upstream legs always find a descriptor (`ConnectionPolicy.client_ceiling`).

    Past it a connection is accepted, answered 503 at once and closed, unread: a
    listener that stopped accepting instead would leave clients hanging in the backlog
    with no answer, and one that let accept() fail would fail the admin port's too (its
    accept() is the same process's) and, under uvloop, drop the excess unanswered. The
    refusal costs one descriptor for a moment, which the reserve holds."""

    __slots__ = ("descriptors", "limit", "open")

    def __init__(self) -> None:
        self.descriptors = 0  # the soft RLIMIT_NOFILE, once raised (0: not known yet)
        self.limit = UNLIMITED  # until `configure`d (a test's listener never is)
        self.open = 0

    def configure(self, descriptors: int, policy: ConnectionPolicy, metrics: Metrics) -> int:
        """Derive the ceiling (at start, and on a reload that changes the policy)."""
        self.descriptors = descriptors
        self.limit = policy.client_ceiling(descriptors)
        metrics.client_connections_ceiling.set(self.limit)
        return self.limit


class Doorway:
    """The listener's bookkeeping, passed to each connection it makes (so the doors do
    not import the listener)."""

    def __init__(
        self,
        policy: ConnectionPolicy,
        metrics: Metrics,
        aiohttp_protocol: AiohttpProtocolFactory,
        ceiling: Ceiling,
    ) -> None:
        self.policy = policy
        self.metrics = metrics
        self.aiohttp_protocol = aiohttp_protocol
        self.ceiling = ceiling
        self.connections: set[Held] = set()
        self._per_address: dict[str, int] = {}
        self._handoffs = 0  # read this turn
        self._next_turn_set = False
        self._waiting: deque[tuple[Guarded, asyncio.Transport, bytes]] = deque()

    def admit(self, conn: Held, transport: asyncio.BaseTransport, address: str) -> bool:
        """Count `conn` against the process's ceiling and its address; False (answered
        503 and closed, nothing read) over either. Every admitted connection is
        `release`d exactly once."""
        ceiling = self.ceiling
        if ceiling.open >= ceiling.limit:
            return self._refuse(transport, FULL, CEILING)
        count = self._per_address.get(address, 0) + 1
        limit = self.policy.max_per_address
        if limit and count > limit:
            return self._refuse(transport, OVER_LIMIT, PER_ADDRESS_LIMIT)
        self._per_address[address] = count
        self.connections.add(conn)
        ceiling.open += 1
        self.metrics.client_connections.inc()
        return True

    def _refuse(self, transport: asyncio.BaseTransport, answer: bytes, reason: str) -> bool:
        self.count(reason)
        cast(asyncio.Transport, transport).write(answer)
        transport.close()
        return False

    def release(self, conn: Held, address: str) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.ceiling.open -= 1
        self.metrics.client_connections.dec()
        count = self._per_address.get(address, 0) - 1
        if count > 0:
            self._per_address[address] = count
        else:
            self._per_address.pop(address, None)

    def swap(self, old: Held, new: Held) -> None:
        """`new` holds the connection `old` held (a hand-off): same count, same address."""
        self.connections.discard(old)
        self.connections.add(new)

    def count(self, reason: str) -> None:
        self.metrics.connections_closed.labels(reason).inc()

    def sweep(self, now: float, *, draining: bool = False) -> None:
        """Close every connection that has overstayed (or, draining, is idle)."""
        for conn in list(self.connections):
            reason = conn.clock.expired(now, draining=draining)
            if reason is not None:
                self.count(reason)
                conn.expire(reason)
                conn.clock.closed()

    def abort_all(self) -> None:
        if self.connections:
            log.warning(
                "shutdown deadline: cutting the connections still open",
                extra={"connections": len(self.connections)},
            )
        for conn in list(self.connections):
            self.count(DRAIN_DEADLINE)
            conn.clock.cut = True
            conn.abort()

    def guarded(self) -> Guarded:
        """A connection aiohttp serves from the start (no fast path)."""
        return Guarded(
            self, self.aiohttp_protocol(), ConnectionClock(self.policy, time.monotonic())
        )

    def hand_off(
        self,
        old: Held,
        transport: asyncio.Transport,
        clock: ConnectionClock,
        address: str,
        data: bytes,
    ) -> Guarded:
        """aiohttp takes `old`'s connection from here on; `clock` goes on timing it. Past
        the turn's share, aiohttp's protocol is made (and reads) in a later turn."""
        guarded = Guarded(self, None, clock, address)
        # The fast path hands a connection over where a head starts.
        guarded.watch_line()
        self.swap(old, guarded)
        transport.set_protocol(guarded)
        guarded.transport = transport
        if data:
            self._count_handoff()
            if self._handoffs > HANDOFFS_PER_TURN or self._waiting:
                transport.pause_reading()
                self._waiting.append((guarded, transport, data))
                return guarded
        guarded.adopt(transport, self.aiohttp_protocol())
        if data:
            guarded.data_received(data)
        return guarded

    def _count_handoff(self) -> None:
        self._handoffs += 1
        if not self._next_turn_set:
            self._next_turn_set = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """A new turn of the loop: the waiting hand-offs are taken, in order, up to the
        turn's share; one whose connection closed meanwhile is skipped."""
        self._next_turn_set = False
        self._handoffs = 0
        waiting = self._waiting
        while waiting and self._handoffs < HANDOFFS_PER_TURN:
            guarded, transport, data = waiting.popleft()
            if transport.is_closing():
                continue
            # Counted, so the next turn is scheduled while any still wait.
            self._count_handoff()
            guarded.adopt(transport, self.aiohttp_protocol())
            transport.resume_reading()
            guarded.data_received(data)


def expire_transport(transport: asyncio.Transport | None, clock: ConnectionClock) -> bool:
    """Close for a timeout. When nothing of an answer has been sent, a 408 goes first
    and the connection lingers (nginx's lingering close): the write side is shut after
    the 408 and what the client still sends is read and dropped for `LINGER` seconds, so
    its kernel does not answer our close with a reset that destroys the 408. True when
    lingering: the caller must drop what arrives."""
    if transport is None or transport.is_closing():
        return False
    if not clock.answerable():
        transport.close()
        return False
    transport.write(TIMED_OUT)
    if transport.can_write_eof():
        transport.write_eof()
    asyncio.get_running_loop().call_later(LINGER, transport.close)
    return True


class Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the listener watching."""

    def __init__(
        self,
        doorway: Doorway,
        inner: asyncio.Protocol | None,
        clock: ConnectionClock,
        address: str = "",
    ) -> None:
        self._doorway = doorway
        # None while a hand-off waits its turn (reading paused): nothing to tell aiohttp.
        self.inner = inner
        self.clock = clock
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.lingering = False
        # The start of a head, kept until its request line is whole (`http1.versionless`).
        self._line: bytearray | None = None

    def watch_line(self) -> None:
        self._line = bytearray()

    def adopt(self, transport: asyncio.Transport, inner: asyncio.Protocol) -> None:
        """Take over a connection the fast path admitted, with aiohttp's protocol `inner`."""
        self.transport = transport
        self.inner = inner
        inner.connection_made(transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.address = peer_address(transport)
        if self._doorway.admit(self, transport, self.address):
            assert self.inner is not None
            self.inner.connection_made(transport)
        else:
            self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        clock = self.clock
        if clock.phase == IDLE:
            clock.received(time.monotonic())
            self._line = bytearray()
        elif clock.phase == UPGRADED:
            clock.received(time.monotonic())
        if self._line is not None and self._versionless(data):
            return
        if self.inner is not None:
            self.inner.data_received(data)

    def _versionless(self, data: bytes) -> bool:
        """Whether the head this connection is receiving started with a request line
        without a version; then it is answered 400 and closed here, at once."""
        line = self._line
        assert line is not None
        line += data
        verdict = http1.versionless(bytes(line))
        if verdict is None and len(line) <= http1.MAX_HEAD:
            return False
        self._line = None
        if not verdict:
            return False  # a line aiohttp's parser judges (or one too long: it refuses)
        if self.transport is not None:
            self.transport.write(NO_VERSION)
            self.transport.close()
        return True

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # never admitted: aiohttp never saw it
        self.transport = None
        # A relayed socket's closer is a method of the relay, which holds this clock: the
        # two would outlive the connection as a cycle (freed only by a full collection).
        self.clock.closer = None
        self._doorway.release(self, self.address)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def expire(self, reason: str) -> None:
        closer = self.clock.closer
        if closer is not None:
            closer(reason)  # a WebSocket: a close frame, then the relay ends
            return
        self.lingering = expire_transport(self.transport, self.clock)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else ""
