"""The fast path's upstream leg: raw keep-alive HTTP/1.1 connections to the upstream.

One `UpstreamConnection` carries one exchange at a time and reports the response to a
`Sink` (the client connection) as it is parsed — head, body pieces, end — with no
coroutine, future or header object in between: this is the per-request work that
aiohttp's client spends most of its time on. The pool is LIFO and drops connections
idle for IDLE_SECONDS, below Node's default keep-alive timeout (5 s), so the proxy
normally closes an idle connection before the upstream does; when the upstream wins
that race anyway, an idempotent request that got no byte back is retried once on a
fresh connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Final, Protocol, cast

import httptools

from proxy.core import errors
from proxy.core.errors import ProxyError
from proxy.core.transitions import ROW, IllegalTransition, packed
from proxy.http import http1

IDLE_SECONDS: Final = 4.0
# An answer's head (interim answers included) may not grow past this before it ends.
MAX_RESPONSE_HEAD: Final = 64 * 1024
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# The clock of read timeouts and idle ages (`sweep` is given the same one). A C static
# under mypyc; `loop.time()` would be a method lookup and call twice a request.
_monotonic: Final = time.monotonic

# The states of an `UpstreamConnection` (httpcore's `HTTPConnectionState`, with the
# exchange's steps spelled out). Plain ints: a C constant each under mypyc, where an
# Enum member is an attribute lookup. SENT to BODY, in this order, are an exchange in
# flight (the sink hears of it).
IDLE: Final = 0  # no exchange: fresh, or back in the pool
SENT: Final = 1  # a request written, no byte of its answer back (a retry is safe)
HEAD: Final = 2  # bytes of the answer's head (interim 1xx answers included) coming
BODY: Final = 3  # the final head handed to the sink, its body relayed
ENDING: Final = 4  # llhttp completed the answer; the exchange ends with this read
BROKEN: Final = 5  # ... and bytes followed it: never pooled, the extra reaches nobody
CLOSED: Final = 6  # aborted, closed or lost: of no further use
STATES: Final = ("IDLE", "SENT", "HEAD", "BODY", "ENDING", "BROKEN", "CLOSED")
TRANSITIONS: Final[dict[int, frozenset[int]]] = {
    IDLE: frozenset({SENT, CLOSED}),
    SENT: frozenset({HEAD, CLOSED}),
    HEAD: frozenset({BODY, CLOSED}),
    BODY: frozenset({ENDING, CLOSED}),
    ENDING: frozenset({BROKEN, IDLE, CLOSED}),
    BROKEN: frozenset({CLOSED}),
    CLOSED: frozenset(),
}
_ALLOWED: Final = packed(TRANSITIONS)


class Sink(Protocol):
    def response_head(self, status: int, head: bytes, framing: http1.Framing) -> None:
        """`head` is the upstream's whole response head as received."""

    def response_body(self, data: bytes) -> None: ...
    def response_end(self) -> None: ...
    def flush(self) -> None: ...
    def upstream_failed(self, refusal: ProxyError, *, retryable: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._state = IDLE
        # The exchange's client connection: set from `send` until the exchange ends.
        self.sink: Sink | None = None
        self.reused = False
        self.idle_since = 0.0
        # The bytes of the answer until its head is complete: heads are read from bytes
        # (`http1`). A 1xx answer's bytes are dropped once it is parsed.
        self._raw = b""
        # The answer's fields its framing depends on, as llhttp reports them (`on_header`).
        self._fields = http1.ResponseFields()
        # llhttp's verdict and the answer's framing, read when its head completes.
        self._keep_alive = False
        self._length_known = False
        # Flow control (the client is slow), beside the exchange's state.
        self._paused = False
        self._last_read = 0.0

    @property
    def state(self) -> int:
        return self._state

    def _to(self, new: int) -> None:
        """Every state change: one the table allows, or IllegalTransition."""
        old = self._state
        if not _ALLOWED[old * ROW + new]:
            raise IllegalTransition("upstream connection", STATES, old, new)
        self._state = new

    # --- the exchange ---------------------------------------------------------------

    def send(self, head: bytes, sink: Sink) -> None:
        assert self.transport is not None
        self._to(SENT)
        self.sink = sink
        self._raw = b""
        self._last_read = _monotonic()
        self._pool.busy.add(self)
        self.transport.write(head)

    def abandon(self) -> None:
        """The client went away: this connection's response is unwanted, so it cannot
        be reused either."""
        self._close()
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> Sink | None:
        """The connection's end (its transport is the caller's): the sink it had, if an
        exchange was open."""
        sink, self.sink = self.sink, None
        if self._state != CLOSED:
            self._to(CLOSED)
        self._pool.busy.discard(self)
        return sink

    def pause(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self._paused:
            self._paused = False
            self._last_read = _monotonic()
            self.transport.resume_reading()

    def check_timeout(self, now: float) -> None:
        """Called about once a second (`UpstreamPool.sweep`) while an exchange is open: a
        timer per request would cost more than the whole header rewrite."""
        if not SENT <= self._state <= BODY or self._paused:  # a slow client is no timeout
            return
        if now - self._last_read >= self._pool.read_timeout:
            self._fail(errors.upstream_failure(errors.TIMEOUT), retryable=False)

    def _fail(self, refusal: ProxyError, *, retryable: bool) -> None:
        sink = self._close()
        if self.transport is not None:
            self.transport.abort()
        if sink is not None:
            sink.upstream_failed(refusal, retryable=retryable)

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if not SENT <= state <= BODY:
            # Bytes on an idle connection: the upstream broke framing; never reuse it.
            self._pool.forget(self)
            self._close()
            if self.transport is not None:
                self.transport.abort()
            return
        self._last_read = _monotonic()
        if state != BODY:
            if state == SENT:
                self._to(HEAD)
            self._raw = self._raw + data if self._raw else data
            if len(self._raw) > MAX_RESPONSE_HEAD and self._raw.find(http1.HEAD_END) < 0:
                self._fail(errors.upstream_failure(errors.BAD_ANSWER), retryable=False)
                return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Malformed, or a 101 to a request that asked for no upgrade; after a whole
            # answer, garbage that follows it (the answer stands, the connection ends).
            if self._state == ENDING:
                self._to(BROKEN)
            elif self._state != BROKEN:
                self._fail(errors.upstream_failure(errors.BAD_ANSWER), retryable=False)
                return
        state = self._state
        if state in (ENDING, BROKEN):
            self._end_exchange()
        elif SENT <= state <= BODY and self.sink is not None:
            self.sink.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.forget(self)
        self.transport = None
        state = self._state
        sink = self._close()
        if sink is None:
            return
        if state == BODY and not self._length_known and exc is None:
            # A body delimited by the upstream closing: this is its end.
            sink.response_end()
            return
        sink.upstream_failed(
            errors.upstream_failure(errors.RESET), retryable=self.reused and state == SENT
        )

    def eof_received(self) -> bool | None:
        return None  # close: a half-closed upstream connection is of no further use

    # --- httptools callbacks ------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self._state != HEAD:
            return  # an answer after the answer (BROKEN): it reaches nobody
        # The head ends at the first blank line: llhttp has checked that no field holds a
        # CR or LF.
        end = self._raw.find(http1.HEAD_END) + len(http1.HEAD_END)
        status = self._parser.get_status_code()
        if status < 200:
            self._raw = self._raw[end:]  # 1xx: the real answer follows on this connection
            return
        head = self._raw[:end]
        self._raw = b""
        self._to(BODY)
        # Only valid here: llhttp resets its flags once the message completes.
        self._keep_alive = self._parser.should_keep_alive()
        framing = self._fields.framing(status)
        self._length_known = not framing.until_close
        sink = self.sink
        assert sink is not None
        sink.response_head(status, head, framing)

    def on_message_begin(self) -> None:
        self._fields.reset()  # each answer's own, a 1xx's included
        if self._state == ENDING:
            # A second answer in the read that completed the first: unsolicited.
            self._to(BROKEN)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.field(name, value)

    def on_body(self, body: bytes) -> None:
        if self._state == BODY and self.sink is not None:
            self.sink.response_body(body)

    def on_message_complete(self) -> None:
        # A 1xx answer completes in HEAD; the final one in BODY. The exchange ends once
        # the read that completed it is parsed to its end, not inside llhttp's callback,
        # so bytes after the answer are seen first (`on_message_begin`).
        if self._state == BODY:
            self._to(ENDING)

    def _end_exchange(self) -> None:
        sink, self.sink = self.sink, None
        assert sink is not None
        self._pool.busy.discard(self)
        transport = self.transport
        # Back in the pool before the client hears the end, so a pipelined next request
        # can reuse this connection: only when it is clean, and only here, once.
        if (
            self._state == BROKEN
            or not self._keep_alive
            or transport is None
            or transport.is_closing()
        ):
            self._to(CLOSED)
            self._pool.forget(self)
            if transport is not None:
                transport.close()
        else:
            self._to(IDLE)
            self._pool.release(self)
        sink.response_end()


class UpstreamPool:
    """Keep-alive connections to one upstream host:port; `limit` 0 means unlimited."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        read_timeout: float,
        limit: int = 0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.limit = limit
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        # Connections with an exchange open, for the read-timeout check in `sweep`.
        self.busy: set[UpstreamConnection] = set()
        self.closed = False

    def take(self) -> UpstreamConnection | None:
        """An idle connection, without waiting; None when one must be made (`connect`)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection, or one released while waiting for room under `limit`.
        Raises ProxyError (502/504)."""
        if self.limit and len(self._open) >= self.limit:
            waiter: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if handed is not None:
                return handed
        conn = UpstreamConnection(self)
        self._open.add(conn)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(lambda: conn, self.host, self.port)
        except OSError as exc:  # TimeoutError included
            self.forget(conn)
            raise errors.upstream_failure(
                errors.upstream_cause(exc) or errors.UNREACHABLE
            ) from None
        except BaseException:  # cancelled: the client went away
            self.forget(conn)
            raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if self.closed:
            if conn.transport is not None:
                conn.transport.close()
            return
        conn.reused = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = _monotonic()
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        # Room under the limit: let one waiter make a connection of its own.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def sweep(self, now: float) -> None:
        """Called about once a second: fail exchanges past the read timeout; close
        connections idle for longer than IDLE_SECONDS (the oldest are at the front)."""
        for conn in list(self.busy):
            conn.check_timeout(now)
        while self._idle and now - self._idle[0].idle_since > IDLE_SECONDS:
            conn = self._idle.pop(0)
            if conn.transport is not None:
                conn.transport.close()

    def close(self) -> None:
        """Close idle connections; busy ones close when their exchange ends."""
        self.closed = True
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()

    @property
    def size(self) -> int:
        return len(self._open)
