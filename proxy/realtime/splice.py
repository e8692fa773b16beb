"""The byte relay: after both handshakes, the two connections are joined and bytes move.

Client frames arrive masked, which is what an upstream expects of a client, and upstream
frames unmasked, which is what a client expects of a server: both are written on as they
came, with no decoding and no re-framing. What the proxy reads is only the frame heads
(2-14 bytes: where the next frame starts, its opcode and length), which gives it:

* frame and message boundaries, where its own frames (a close, a Socket.IO DISCONNECT on
  expiry, a CONNECT_ERROR) are put in between the peers' ones;
* message sizes (`websocket.max_message_size`: both legs closed with 1009 before any byte
  of a larger message is relayed) and close frames' codes;
* on Socket.IO, the first bytes of a client text message (unmasked: 13 at most), to find
  CONNECTs (held, rewritten, re-framed), DISCONNECTs and announced binary attachments,
  and of an upstream one for `41`/`44` (that namespace is over).

Each socket is two protocol objects and the state below; no task runs while it idles (a
CONNECT being verified, or a principal being re-verified, is a short-lived task). It is
used when neither leg negotiates an extension and the proxy sends no heartbeat of its own
(`websocket.relay` picks); permessage-deflate needs the framing relay.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Final

from proxy.core.timeouts import ConnectionClock
from proxy.realtime import socketio as sio
from proxy.realtime.namespaces import Namespaces, Refused
from proxy.realtime.relays import (
    GOING_AWAY,
    POLICY_VIOLATION,
    UNSENDABLE,
    UNSUPPORTED_DATA,
    Caller,
    RelayContext,
)

CONT: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007
TOO_BIG: Final = 1009
# How long a closing socket waits for the peers' answering close frames.
CLOSE_TIMEOUT: Final = 5.0
# What the proxy reads of a client text message: `45` + a count of up to 10 digits + `-`.
_PEEK: Final = 13
_REASONS: Final = {PROTOCOL_ERROR: "protocol error", TOO_BIG: "message too big"}


def frame_head(data: bytes, pos: int) -> tuple[int, int]:
    """(head length, payload length) of the frame starting at `pos` (its first two bytes
    are there), or (0, 0) while the rest of its head has not arrived (RFC 6455 §5.2)."""
    b1 = data[pos + 1]
    size = b1 & 0x7F
    hl = (4 if size == 126 else 10 if size == 127 else 2) + (4 if b1 & 0x80 else 0)
    if len(data) - pos < hl:
        return 0, 0
    if size == 126:
        size = int.from_bytes(data[pos + 2 : pos + 4], "big")
    elif size == 127:
        size = int.from_bytes(data[pos + 2 : pos + 10], "big")
    return hl, size


def unmask(mask: bytes, data: bytes) -> bytes:
    """XOR with the 4-byte key (masking and unmasking are the same); only CONNECTs and
    13-byte peeks go through here."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """One final frame. Masked (with a fresh key) towards the upstream, as a client's."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(key, payload)


def close_payload(code: int, reason: str) -> bytes:
    code = UNSENDABLE.get(code, code)
    return code.to_bytes(2, "big") + reason.encode()[:123]


class Leg(asyncio.Protocol):
    """One of the two connections: scans what it receives and writes it to its peer."""

    # Deleted when the socket ends (`Splice.lost`): nothing reads it after that.
    __deletable__ = ("link",)

    def __init__(self, link: Splice, from_client: bool) -> None:
        super().__init__()
        self.link = link
        self.from_client = from_client
        self.peer: Leg | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.paused = False  # reading stopped while a CONNECT is verified
        self.held = b""  # an incomplete head, or a frame that must be read whole
        self.left = 0  # payload bytes of the current frame still to pass
        self.in_message = False  # inside a fragmented message
        self.message_size = 0
        self.sent_close = False  # a close frame came from this side
        self.stop_code = 0  # why a client packet ends the socket
        self.stop_reason = ""
        # Frames of the proxy's own waiting for a boundary of what this leg is sent.
        self.pending: list[tuple[bytes, bool]] | None = None
        self.mid_frame = False  # what this leg is sent is inside a frame
        self.mid_message = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.held:
            data = self.held + data
            self.held = b""
        if self.paused:
            self.held = data
            return
        self.feed(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.link.lost(self)

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.paused:
            peer.transport.resume_reading()

    # -- writing ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def inject(self, data: bytes, *, control: bool) -> None:
        """A frame of the proxy's own, at the next frame boundary (control frames) or
        message boundary (data frames) of what this leg is sent."""
        if self.pending or self.mid_frame or (self.mid_message and not control):
            if self.pending is None:
                self.pending = []
            self.pending.append((data, control))
        else:
            self.write(data)

    def boundary(self, *, mid_frame: bool, mid_message: bool) -> None:
        self.mid_frame, self.mid_message = mid_frame, mid_message
        pending = self.pending
        while pending and not mid_frame:
            data, control = pending[0]
            if mid_message and not control:
                return
            del pending[0]
            self.write(data)
        if pending is not None and not pending:
            self.pending = None

    # -- reading ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Relay `data`; keep back what ends in the middle of a head (or of a frame that
        must be read whole)."""
        link = self.link
        if link.closing:
            self._drain(data)
            return
        peer = self.peer
        assert peer is not None
        n = len(data)
        pos = 0  # where the scan is
        start = 0  # the first byte not yet written on
        messages = 0
        while pos < n:
            left = self.left
            if left:
                take = left if left <= n - pos else n - pos
                pos += take
                self.left = left - take
                if self.left == 0 and peer.pending:
                    peer.write(data[start:pos])
                    start = pos
                    peer.boundary(mid_frame=False, mid_message=self.in_message)
                continue
            avail = n - pos
            if avail < 2:
                break
            b0 = data[pos]
            masked = data[pos + 1] & 0x80 != 0
            hl, size = frame_head(data, pos)
            if hl == 0:
                break
            opcode = b0 & 0x0F
            fin = b0 & 0x80 != 0
            body = pos + hl
            code = 0
            if b0 & 0x70 or masked != self.from_client:
                code = PROTOCOL_ERROR
            elif opcode >= CLOSE:
                if size > 125 or not fin or opcode > PONG:
                    code = PROTOCOL_ERROR
                elif opcode == CLOSE:
                    if avail < hl + size:
                        break
                    payload = data[body : body + size]
                    if masked:
                        payload = unmask(data[body - 4 : body], payload)
                    self.sent_close = True
                    link.note_end(
                        int.from_bytes(payload[:2], "big") if size >= 2 else 1005,
                        payload[2:].decode("utf-8", "replace"),
                    )
            elif opcode == CONT:
                if not self.in_message:
                    code = PROTOCOL_ERROR
                self.message_size += size
            elif opcode in (TEXT, BINARY):
                if self.in_message:
                    code = PROTOCOL_ERROR
                self.message_size = size
            else:
                code = PROTOCOL_ERROR
            if code == 0 and opcode < CLOSE:
                if self.message_size > link.max_size:
                    code = TOO_BIG
                elif link.socketio and opcode != CONT:
                    if self.from_client:
                        verdict = self._client_message(data, body, size, opcode, fin)
                    else:
                        verdict = self._upstream_message(data, body, size, opcode)
                    if verdict == _WAIT:
                        break
                    if verdict == _STOP:
                        code = self.stop_code
                    elif verdict == _CONNECT:
                        # Held whole: what came before goes on, the CONNECT waits for
                        # Clerk, what came after waits for the CONNECT.
                        if start < pos:
                            peer.write(data[start:pos])
                        peer.boundary(mid_frame=False, mid_message=False)
                        self._done(messages)
                        payload = unmask(data[body - 4 : body], data[body : body + size])
                        self.held = data[body + size :]
                        self._pause()
                        link.connect(self, payload)
                        return
                if code == 0:
                    self.in_message = not fin
                    if fin:
                        messages += 1
            if code:
                # What precedes this frame goes on; nothing more is relayed.
                if start < pos:
                    peer.write(data[start:pos])
                peer.boundary(mid_frame=False, mid_message=self.in_message)
                self._done(messages)
                reason = self.stop_reason if code == self.stop_code else ""
                link.begin_close(code, reason or _REASONS.get(code, ""))
                return
            pos = body
            self.left = size
            if size == 0 and peer.pending:
                peer.write(data[start:pos])
                start = pos
                peer.boundary(mid_frame=False, mid_message=self.in_message)
        if pos < n:
            self.held = data[pos:]
        if start < pos:
            peer.write(data[start:pos])
        peer.boundary(mid_frame=self.left > 0, mid_message=self.in_message)
        self._done(messages)

    def _done(self, messages: int) -> None:
        link = self.link
        if messages:
            link.count(self, messages)
        clock = link.clock
        if clock is not None:
            clock.frame(time.monotonic())

    def _drain(self, data: bytes) -> None:
        """After the proxy's close: the frame in flight is finished (so the close can
        follow it), then nothing more is relayed; the peer's close frame ends the leg."""
        peer = self.peer
        assert peer is not None
        n = len(data)
        pos = 0
        while pos < n:
            left = self.left
            if left:
                take = left if left <= n - pos else n - pos
                if peer.mid_frame:
                    peer.write(data[pos : pos + take])
                pos += take
                self.left = left - take
                if self.left == 0 and peer.mid_frame:
                    peer.boundary(mid_frame=False, mid_message=self.in_message)
                continue
            avail = n - pos
            if avail < 2:
                break
            hl, size = frame_head(data, pos)
            if hl == 0:
                break
            if data[pos] & 0x0F == CLOSE:
                self.link.answered(self)
                return
            pos += hl
            self.left = size
        if pos < n:
            self.held = data[pos:]

    def _stop(self, code: int, reason: str) -> int:
        self.stop_code, self.stop_reason = code, reason
        return _STOP

    def _client_message(self, data: bytes, body: int, size: int, opcode: int, fin: bool) -> int:
        link = self.link
        if opcode == BINARY:
            if link.attachments == 0:
                return self._stop(UNSUPPORTED_DATA, "binary packet outside an attachment")
            link.attachments -= 1
            return _PASS
        peek = size if size < _PEEK else _PEEK
        if len(data) < body + peek:
            return _WAIT
        mask = data[body - 4 : body]
        head = unmask(mask, data[body : body + peek])
        if head.startswith(b"40"):
            if not fin:
                return self._stop(POLICY_VIOLATION, "bad_request: a fragmented CONNECT")
            if len(data) < body + size:
                return _WAIT
            return _CONNECT
        if head.startswith(b"4") and sio.ambiguous_prefix(head.decode("latin-1")):
            return self._stop(POLICY_VIOLATION, sio.AMBIGUOUS_PREFIX)
        if head.startswith(b"41"):
            if fin:
                if len(data) < body + size:
                    return _WAIT
                text = unmask(mask, data[body : body + size]).decode("utf-8", "replace")
            else:
                text = head.decode("latin-1")
            link.names.forget(text)
        elif head.startswith((b"45", b"46")):
            link.attachments += sio.binary_attachments(head.decode("latin-1"))
        elif head == b"5":
            link.names.adopt_polling()
        return _PASS

    def _upstream_message(self, data: bytes, body: int, size: int, opcode: int) -> int:
        if opcode != TEXT or not self.link.names.watches:
            return _PASS
        if len(data) < body + min(size, 2):
            return _WAIT
        head = data[body : body + 2]
        if head == b"41" or head == b"44":
            if len(data) < body + size:
                return _WAIT
            self.link.names.forget(data[body : body + size].decode("utf-8", "replace"))
        return _PASS

    def _pause(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()
        data, self.held = self.held, b""
        if data:
            self.feed(data)


_PASS: Final = 0
_WAIT: Final = 1
_STOP: Final = 2
_CONNECT: Final = 3


class Splice:
    """One client socket joined to one upstream socket."""

    def __init__(
        self,
        ctx: RelayContext,
        caller: Caller,
        *,
        socketio: bool,
        sid: str | None,
        clock: ConnectionClock | None,
    ) -> None:
        self.ctx = ctx
        self.socketio = socketio
        self.max_size = ctx.settings.max_message_size
        self.clock = clock
        self.client = Leg(self, True)
        self.upstream = Leg(self, False)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.names = Namespaces(ctx, caller, sid, self)
        self.attachments = 0  # binary frames the client announced (BINARY_EVENT/ACK)
        self.closing = False  # the proxy sent its own close frames
        self.ended: tuple[int, str] | None = None  # how the first leg to close closed
        # Made only when someone waits for the end (`close`): most sockets end unwatched.
        self.done: asyncio.Future[None] | None = None
        self.over = False
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Future[None] | None = None  # a CONNECT being verified
        m = ctx.metrics.websocket_messages
        self.up_count = m.labels("client_to_upstream")
        self.down_count = m.labels("upstream_to_client")

    def count(self, leg: Leg, messages: int) -> None:
        (self.up_count if leg is self.client else self.down_count).inc(messages)

    def note_end(self, code: int, reason: str) -> None:
        if self.ended is None:
            self.ended = (code, reason)

    # -- CONNECT ------------------------------------------------------------------------

    def connect(self, leg: Leg, payload: bytes) -> None:
        self._task = asyncio.ensure_future(self._connect(leg, payload))

    async def _connect(self, leg: Leg, payload: bytes) -> None:
        try:
            await self._rewrite(leg, payload)
        finally:
            self._task = None  # a finished task keeps its coroutine: not per socket

    async def _rewrite(self, leg: Leg, payload: bytes) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self.begin_close(INVALID_DATA, "invalid UTF-8 text")
            return
        try:
            out, error = await self.names.connect(text)
        except Refused as refused:
            self.begin_close(refused.code, refused.reason)
            return
        if self.closing or leg.lost:
            return
        if out is not None:
            self.upstream.inject(frame(TEXT, out.encode(), masked=True), control=False)
            self.count(leg, 1)
        if error is not None:
            self.client.inject(frame(TEXT, error.encode(), masked=False), control=False)
        leg.resume()

    def namespace_over(self, namespace: str) -> None:
        if not self.socketio:
            self.begin_close(POLICY_VIOLATION, "token expired")
            return
        packet = sio.disconnect_packet(namespace).encode()
        self.client.inject(frame(TEXT, packet, masked=False), control=False)
        self.upstream.inject(frame(TEXT, packet, masked=True), control=False)

    # -- the end ------------------------------------------------------------------------

    def begin_close(self, code: int, reason: str) -> None:
        """Close both legs with the proxy's own close frame; each peer's answer (or
        `CLOSE_TIMEOUT`) ends its connection."""
        if self.closing or self.over:
            return
        self.closing = True
        self.note_end(code, reason)
        payload = close_payload(code, reason)
        for leg in (self.client, self.upstream):
            if leg.lost:
                continue
            peer = leg.peer
            assert peer is not None
            if peer.sent_close:
                # This leg was already sent its peer's close: it answers that one.
                continue
            leg.inject(frame(CLOSE, payload, masked=leg is self.upstream), control=True)
        self._deadline = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def answered(self, leg: Leg) -> None:
        """`leg`'s peer answered the proxy's close: its connection ends."""
        if leg.transport is not None:
            leg.transport.close()

    async def close(self, code: int, reason: str) -> None:
        self.begin_close(code, reason)
        if self.over:
            return
        if self.done is None:
            self.done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self.done)

    def close_soon(self, reason: str) -> None:
        """The listener's idle sweep."""
        self.begin_close(GOING_AWAY, reason)

    def lost(self, leg: Leg) -> None:
        other = leg.peer
        assert other is not None
        if not other.lost and other.transport is not None:
            if not self.closing and not leg.sent_close and not other.mid_frame:
                # Dropped without a close frame: the other peer is told 1001.
                self.note_end(GOING_AWAY, "")
                payload = close_payload(GOING_AWAY, "")
                other.inject(frame(CLOSE, payload, masked=other is self.upstream), control=True)
            other.transport.close()  # after what is buffered for it
            return
        if self.over:
            return
        self.over = True
        self.names.stop()
        if self._deadline is not None:
            self._deadline.cancel()
        self.ctx.registry.untrack(self)
        self.ctx.metrics.websocket_connections.dec()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)
        # Parts of a socket that hold each other (the legs and this, a transport and its
        # protocol) outlive it as a cycle, which only a full collection frees: one that
        # walks every open socket on the loop's thread (5,000 closed at once: 115,000
        # objects, 260-350 ms). Let go, they go with the socket (the clock's closer: the
        # listener's `Guarded.connection_lost`).
        for each in (self.client, self.upstream):
            each.peer = each.transport = None
            del each.link

    def _abort(self) -> None:
        for leg in (self.client, self.upstream):
            if leg.transport is not None and not leg.lost:
                leg.transport.abort()


class _Answer(asyncio.Protocol):
    """The upstream leg until its 101 is read; then its transport goes to the `Leg`."""

    def __init__(self) -> None:
        self.head = b""
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head and not self.done.done():
            self.done.set_result(self.head)
            if self.transport is not None:
                self.transport.pause_reading()  # what follows the 101 is for the Leg
        elif len(self.head) > 65536 and not self.done.done():
            self.done.set_exception(ConnectionResetError("upstream answer head too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("upstream closed"))


async def open_upstream(
    host: str,
    port: int,
    tls: bool,
    request_bytes: bytes,
    *,
    connect_timeout: float | None,
    read_timeout: float | None,
) -> tuple[asyncio.Transport, _Answer]:
    """Connect and send the upgrade; the answer's head (and what followed it) is in
    `_Answer.done`. Raises OSError / TimeoutError like aiohttp's connect would."""
    loop = asyncio.get_running_loop()
    answer = _Answer()
    async with asyncio.timeout(connect_timeout):
        transport, _ = await loop.create_connection(
            lambda: answer, host, port, ssl=tls or None, server_hostname=host if tls else None
        )
    transport.write(request_bytes)
    try:
        async with asyncio.timeout(read_timeout):
            await answer.done
    except BaseException:
        transport.abort()
        raise
    return transport, answer
