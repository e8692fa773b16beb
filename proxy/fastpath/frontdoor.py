"""The fast path: the client-facing listener, taking plain API requests itself.

Each client connection starts as a `FrontDoor`. For a request its `http1.HeadParser`
accepts (HTTP/1.1, no body, no upgrade, not Socket.IO), it runs the same request path
as `Proxy.handle` — route → authenticate (cache first) → admit → forward → finished —
with callbacks instead of coroutines, and relays the answer from a raw upstream
connection (`upstream`). A cache hit costs no task, future or header object beyond the
rewrite itself. The first request it does not accept is handed, with every byte still
unread, to aiohttp's own protocol for that connection (`transport.set_protocol`), which
then owns the connection for good: bodies, WebSockets, Socket.IO, oddities. The
listener that makes them, sweeps idle ones and drains them is `listener`.

Requests on one connection are answered in order, one at a time (pipelined requests
wait in the buffer), exactly like aiohttp's server.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from typing import Final, cast

from proxy.core.errors import ProxyError, internal_error
from proxy.core.principal import ANONYMOUS, Principal, Recent
from proxy.core.timeouts import IDLE, ConnectionClock
from proxy.core.transitions import ROW, IllegalTransition, packed
from proxy.fastpath.doorway import Doorway, expire_transport, peer_address
from proxy.fastpath.fields import HeadFieldsMemo
from proxy.fastpath.upstream_head import upstream_head
from proxy.http import http1
from proxy.http.headers import ClientHop, client_items
from proxy.http.upstream import IDEMPOTENT, UpstreamConnection, UpstreamPool
from proxy.observe.correlation import new_request_id
from proxy.request.app import Proxy
from proxy.request.routed import Authenticated, Routed
from proxy.request.runtime import Runtime

log = logging.getLogger("proxy")

# Pipelined bytes buffered while a request is answered before reading pauses.
MAX_BUFFER: Final = 64 * 1024
SOCKETIO_PREFIX: Final = "/socket.io/"
# Answers up to this size are held until complete and sent in one write, so an upstream
# dying mid-body still gets a 502 instead of a short 200 (as in `forward`).
SMALL_BODY: Final = 64 * 1024
# Final: a C static under mypyc, where `time.perf_counter()` is a module lookup per call
# (four clock reads a request).
_perf_counter: Final = time.perf_counter
_monotonic: Final = time.monotonic

# The states of a `FrontDoor` (h11's `_state.py`, for one server-side connection that
# answers in order). Plain ints: a C constant each under mypyc, where an Enum member is an
# attribute lookup. ROUTING to STREAMING, in this order, are "busy": an exchange is in
# flight.
READING: Final = 0  # between exchanges: the next head is awaited
ROUTING: Final = 1  # a head taken: route, cached authentication, admission (synchronous)
AUTHENTICATING: Final = 2  # the token awaits a verdict (a task)
CONNECTING: Final = 3  # a new upstream connection awaited (a task)
SENT: Final = 4  # the request is on an upstream connection; no answer head yet
HELD: Final = 5  # the answer's head is in; the answer is held until whole (SMALL_BODY)
RELAYING: Final = 6  # the answer's head is in, relayed as it comes; nothing sent yet
STREAMING: Final = 7  # the client has part of the answer: too late for another status
CLOSING: Final = 8  # nothing more is served; the transport is closing
HANDED_OFF: Final = 9  # aiohttp's protocol owns the connection
CLOSED: Final = 10  # the connection is lost
STATES: Final = (
    "READING",
    "ROUTING",
    "AUTHENTICATING",
    "CONNECTING",
    "SENT",
    "HELD",
    "RELAYING",
    "STREAMING",
    "CLOSING",
    "HANDED_OFF",
    "CLOSED",
)
# Every busy state may end in an answer (READING, or CLOSING when it is the last) or in
# the client's leaving (CLOSED).
_ENDS: Final = frozenset({READING, CLOSING, CLOSED})
TRANSITIONS: Final[dict[int, frozenset[int]]] = {
    READING: frozenset({ROUTING, CLOSING, HANDED_OFF, CLOSED}),
    # Socket.IO is aiohttp's, known once routed.
    ROUTING: _ENDS | {AUTHENTICATING, SENT, CONNECTING, HANDED_OFF},
    AUTHENTICATING: _ENDS | {SENT, CONNECTING},
    # A retry on a kept-alive connection the upstream had closed goes back to SENT.
    CONNECTING: _ENDS | {SENT},
    SENT: _ENDS | {SENT, CONNECTING, HELD, RELAYING},
    HELD: _ENDS,
    RELAYING: _ENDS | {STREAMING},
    STREAMING: _ENDS,
    CLOSING: frozenset({CLOSED}),
    HANDED_OFF: frozenset(),
    CLOSED: frozenset(),
}
_ALLOWED: Final = packed(TRANSITIONS)


class FrontDoor(asyncio.Protocol):
    def __init__(self, proxy: Proxy, doorway: Doorway) -> None:
        # The listener's bookkeeping (live connections, per-address counts, the clock
        # it sweeps with): passed in, so this module does not import the listener.
        self._doorway = doorway
        self.clock = ConnectionClock(doorway.policy, _monotonic())
        self._proxy = proxy
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._peer = ""
        self._hop = ClientHop("", "http", None)
        self._parser = http1.HeadParser()
        self._state = READING
        # A guard against `_next` re-entering itself (an answer given synchronously ends
        # the exchange inside the loop), and flow control: neither is the state's.
        self._in_next = False
        self._reading_paused = False
        # The exchange in flight.
        self._head: http1.RequestHead | None = None
        self._rt: Runtime | None = None
        self._route_name = "unmatched"
        self._principal: Principal = ANONYMOUS
        # Why it was refused (or fell back to anonymous), its id and trace context.
        self._why: ProxyError | None = None
        self._request_id: str | None = None
        self._made_id = False
        self._traceparent: bytes | None = None
        self._recent = Recent()
        # The last Authorization values and the bearer token they gave: a keep-alive
        # partner sends the same header on every request (see `bearer`).
        self._fields = HeadFieldsMemo()
        self._started = 0.0
        self._upstream: UpstreamConnection | None = None
        self._upstream_head = b""
        self._upstream_started = 0.0
        self._task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self._chunked = False
        self._status = 0
        # Verdicts on the exchange in flight: whether the connection outlives it, and
        # whether a failed upstream connection may be tried once more.
        self._keep_alive = True
        self._retry = False

    @property
    def state(self) -> int:
        return self._state

    def _to(self, new: int) -> None:
        """Every state change: one the table allows, or IllegalTransition (raised into
        the event loop, which ends this connection: never an answer to another)."""
        old = self._state
        if not _ALLOWED[old * ROW + new]:
            raise IllegalTransition("front door", STATES, old, new)
        self._state = new

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self._peer = peer_address(transport)
        self._hop = ClientHop(self._peer, "http", None)
        if not self._doorway.admit(self, transport, self._peer):
            self.transport = None

    def data_received(self, data: bytes) -> None:
        if self._state == CLOSING:
            return  # nothing more is served: dropped (a 408's lingering close reads on)
        self._buffer += data
        if self.clock.phase == IDLE:  # the first byte of a head: its clock starts
            self.clock.received(_monotonic())
        if ROUTING <= self._state <= STREAMING:
            if len(self._buffer) > MAX_BUFFER and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()
            return
        self._next()

    def eof_received(self) -> bool | None:
        # A client that half-closes still gets the answer in flight, then the close.
        state = self._state
        if ROUTING <= state <= STREAMING:
            self._keep_alive = False
        elif state != CLOSING:
            if self.transport is not None:
                self.transport.close()
            self._to(CLOSING)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._doorway.release(self, self._peer)
        self.transport = None
        if ROUTING <= self._state <= STREAMING:
            # The client went away mid-exchange (499, nginx's "client closed request"),
            # or the drain's deadline cut it (503: the proxy ended it): drop the upstream
            # leg.
            if self._task is not None:
                self._task.cancel()
            if self._upstream is not None:
                self._upstream.abandon()
                self._upstream = None
            self._finish(503 if self.clock.cut else 499)
        self._to(CLOSED)

    def pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.pause()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.resume()

    # --- reading requests -------------------------------------------------------------

    def _next(self) -> None:
        """Take the next request in the buffer, if a whole head is there."""
        if self._in_next:
            return
        self._in_next = True
        try:
            while self._state == READING and self.transport is not None:
                end = self._buffer.find(http1.HEAD_END)
                if end < 0:
                    # Only heads that arrive whole are the fast path's: a partial one is
                    # aiohttp's to wait for or refuse as its bytes come (bare LFs, a NUL),
                    # byte for byte as its own door would.
                    if self._buffer:
                        self._hand_off()
                    return
                end += len(http1.HEAD_END)
                head = self._parser.parse(
                    bytes(self._buffer[:end]), self._proxy.runtime.rewrite.picked
                )
                if head is None or not self._start(head, end):
                    self._hand_off()
                    return
            if self._state == CLOSING and self.transport is not None:
                self.transport.close()
        finally:
            self._in_next = False
            if self._reading_paused and len(self._buffer) <= MAX_BUFFER and self.transport:
                self._reading_paused = False
                self.transport.resume_reading()

    def _hand_off(self) -> None:
        transport = self.transport
        assert transport is not None
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self.transport = None
        self._to(HANDED_OFF)
        self._doorway.hand_off(self, transport, self.clock, self._peer, data)

    # --- the request path (see Proxy.handle for the same steps in aiohttp) ---------------

    def _start(self, head: http1.RequestHead, head_size: int) -> bool:
        """Run the request path for `head`; False (nothing done) when aiohttp must."""
        self._to(ROUTING)
        self.clock.busy()
        self._head = head
        self._started = _perf_counter()
        self._route_name = "unmatched"
        self._principal = ANONYMOUS
        self._why = None
        self._keep_alive = head.keep_alive
        self._out = []
        rt = self._rt = self._proxy.runtime
        self._traceparent = head.traceparent
        self._made_id = head.request_id is None and rt.correlation.enabled
        self._request_id = new_request_id() if self._made_id else head.request_id
        hop = self._hop
        if hop.host != head.host:
            hop = self._hop = ClientHop(self._peer, "http", head.host)
        try:
            self._fields.head = head
            routed = self._proxy.route(rt, head.method, head.target, self._fields, hop)
        except Exception as exc:
            del self._buffer[:head_size]
            self._fail(exc)
            return True
        if routed.resolved.path.startswith(SOCKETIO_PREFIX):
            # Socket.IO polling carries CONNECT packets and grants: aiohttp's side has that
            # logic. Judged on the normalized path, so no spelling slips past.
            return False
        del self._buffer[:head_size]
        self._route_name = routed.route.name
        try:
            authenticated = self._proxy.authenticate_cached(rt, routed, self._recent)
            if authenticated is None:
                self._to(AUTHENTICATING)
                self._task = asyncio.ensure_future(self._authenticate(rt, routed, hop))
                return True
            self._admitted(rt, routed, authenticated, hop)
        except Exception as exc:
            self._fail(exc)
        return True

    async def _authenticate(self, rt: Runtime, routed: Routed, hop: ClientHop) -> None:
        try:
            authenticated = await self._proxy.authenticate(rt, routed)
            self._task = None
            self._admitted(rt, routed, authenticated, hop)
        except Exception as exc:
            self._task = None
            self._fail(exc)

    def _admitted(
        self, rt: Runtime, routed: Routed, authenticated: Authenticated, hop: ClientHop
    ) -> None:
        if self.transport is None:
            return
        head = self._head
        assert head is not None
        # Who, and why anonymous, before the route may refuse them: the line names both.
        self._principal, self._why = authenticated
        principal = self._proxy.authorize(rt, routed, authenticated)
        sent = upstream_head(rt, head, principal, hop, routed.resolved)
        request_id = self._request_id
        if self._made_id and request_id is not None:
            # One made here: the upstream learns it too.
            sent = b"".join((sent[:-4], rt.correlation.field, request_id.encode(), http1.HEAD_END))
        self._upstream_head = sent
        self._send_upstream(retry=head.method in IDEMPOTENT)

    def _send_upstream(self, *, retry: bool) -> None:
        pool = self._proxy.fast_pool
        self._upstream_started = _perf_counter()
        conn = pool.take()
        if conn is None:
            self._to(CONNECTING)
            self._task = asyncio.ensure_future(self._connect(pool, retry))
            return
        self._to(SENT)
        self._upstream = conn
        self._retry = retry
        conn.send(self._upstream_head, self)

    async def _connect(self, pool: UpstreamPool, retry: bool) -> None:
        try:
            conn = await pool.connect()
        except Exception as exc:
            self._task = None
            if isinstance(exc, ProxyError):
                self._proxy.metrics.count_upstream_failure(exc.cause)
            self._fail(exc)
            return
        self._task = None
        if self.transport is None:  # the client left while we connected
            pool.release(conn)
            return
        self._to(SENT)
        self._upstream = conn
        # A fresh connection that fails gets no second try.
        self._retry = retry and conn.reused
        conn.send(self._upstream_head, self)

    def _refuse(self, refusal: ProxyError) -> None:
        self._why = refusal
        if refusal.ends_connection:
            self._keep_alive = False
        if self.transport is not None:
            headers = list(refusal.headers().items())
            rt, request_id = self._rt, self._request_id
            if request_id is not None and rt is not None:
                headers.append((rt.correlation.name, request_id))
            self.transport.write(
                http1.simple_response(
                    refusal.status,
                    http.HTTPStatus(refusal.status).phrase,
                    headers,
                    refusal.body(),
                    close=not self._keep_alive,
                )
            )
        self._done(refusal.status)

    def _fail(self, exc: Exception) -> None:
        """A refusal is answered; anything else gets the last resort (as on aiohttp's door):
        a logged 500 and the connection's end, never a request left without an answer."""
        if isinstance(exc, ProxyError):
            self._refuse(exc)
            return
        self._keep_alive = False
        if self._upstream is not None:
            self._upstream.abandon()
            self._upstream = None
        self._refuse(internal_error(exc, "fast"))

    # --- upstream.Sink ---------------------------------------------------------------------

    def response_head(self, status: int, head: bytes, framing: http1.Framing) -> None:
        self._proxy.metrics.upstream_duration.observe(_perf_counter() - self._upstream_started)
        self._status = status
        self._chunked = framing.has_body and framing.chunked
        held = framing.length is not None and framing.length <= SMALL_BODY
        self._to(HELD if held else RELAYING)
        if self._proxy.draining:
            self._keep_alive = False
        answer = http1.client_head(
            status, head, framing=framing, close=not self._keep_alive, clean=client_items
        )
        request_id, rt = self._request_id, self._rt
        if (
            self._made_id
            and request_id is not None
            and rt is not None
            and not rt.correlation.in_block(http1.fields_of(head))
        ):
            # The client learns the id made for its request.
            correlation = rt.correlation
            answer = b"".join((answer[:-4], correlation.field, request_id.encode(), http1.HEAD_END))
        self._out.append(answer)

    def response_body(self, data: bytes) -> None:
        self._out.append(http1.chunk(data) if self._chunked else data)

    def response_end(self) -> None:
        if self._chunked:
            self._out.append(http1.LAST_CHUNK)
        self._upstream = None
        self._write_out()
        self._done(self._status)

    def flush(self) -> None:
        if self._state != HELD and self._write_out() and self._state == RELAYING:
            self._to(STREAMING)

    def _write_out(self) -> bool:
        """Write what the answer has so far; whether anything reached the transport."""
        out = self._out
        if not out:
            return False
        written = self.transport is not None
        if self.transport is not None:
            self.transport.write(b"".join(out))
        out.clear()
        return written

    def upstream_failed(self, refusal: ProxyError, *, retryable: bool) -> None:
        self._upstream = None
        if self.transport is None:
            return
        if retryable and self._retry and self._state != STREAMING:
            # A kept-alive connection the upstream had already closed: try once more.
            self._retry = False
            self._send_upstream(retry=False)
            return
        self._proxy.metrics.count_upstream_failure(refusal.cause)
        if self._state == STREAMING:
            # Too late for a status: the client sees a truncated response.
            self.transport.abort()
            self._finish(self._status)
            self._to(CLOSING)
            return
        self._out.clear()
        self._refuse(refusal)

    # --- end of an exchange -------------------------------------------------------------

    def _finish(self, status: int) -> None:
        """Log and count the exchange in flight (the caller moves the state on)."""
        if ROUTING <= self._state <= STREAMING and self._rt is not None and self._head is not None:
            self._proxy.finished(
                self._rt,
                self._route_name,
                self._head.method,
                status,
                self._started,
                self._principal,
                self._peer,
                self._why,
                self._request_id,
                self._traceparent,
            )
        self._head = None
        self._rt = None

    def _done(self, status: int) -> None:
        self._finish(status)
        self.clock.answered(_monotonic())
        if self.transport is None:
            return
        if not self._keep_alive or self._proxy.draining:
            self._to(CLOSING)
            self.transport.close()
            return
        self._to(READING)
        if self._buffer:
            # What came meanwhile is the next head: timed as a head from now.
            self.clock.received(_monotonic())
            self._next()

    # --- lifetime ----------------------------------------------------------------------

    def expire(self, reason: str) -> None:
        """The listener's verdict (`ConnectionClock.expired`: never while busy)."""
        if self._state != CLOSING:
            self._to(CLOSING)
        expire_transport(self.transport, self.clock)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
