"""The WebSocket relay, with the Socket.IO CONNECT rewriter on `/socket.io/`.

The upstream is connected first, with the client's subprotocols, and the client is then
accepted with the one the upstream chose, so a refusal is still an HTTP answer. Both legs
run with `autoclose=False, autoping=False`: pings, pongs and close frames (code and
reason) are relayed, not answered by the proxy. A verified principal is watched for the
life of the socket: when its token expires (or a re-verification fails) a Socket.IO
namespace gets a DISCONNECT on both legs and a plain WebSocket is closed with 1008.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Mapping
from typing import Final

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from proxy.config import model as config
from proxy.core.background import Background
from proxy.core.errors import (
    BAD_ANSWER,
    BAD_REQUEST,
    RESET,
    UPSTREAM_UNAVAILABLE,
    ProxyError,
    bad_request,
    upstream_cause,
)
from proxy.core.timeouts import ConnectionClock, clock_of
from proxy.realtime import handshake, splice
from proxy.realtime import socketio as sio
from proxy.realtime.handshake import check_origin, client_protocols
from proxy.realtime.namespaces import Namespaces, Refused
from proxy.realtime.relays import (
    GOING_AWAY,
    POLICY_VIOLATION,
    UNSENDABLE,
    UNSUPPORTED_DATA,
    Caller,
    RelayContext,
)
from proxy.realtime.socketio import Grant

Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse

_SERVER_GONE: Final = ("41", "44")  # the upstream ended or refused a namespace
_UPGRADE_PACKET: Final = "5"


async def relay(
    request: web.Request,
    ctx: RelayContext,
    caller: Caller,
    *,
    upstream_url: URL,
    upstream_headers: Mapping[str, str] | CIMultiDict[str],
    socketio: bool,
) -> web.StreamResponse:
    settings = ctx.settings
    check_origin(request.headers.get("Origin"), settings.allowed_origins)
    if socketio:
        sio.check_query(request.query_string)
    if _bytes_suffice(request, settings):
        # A wave's upgrades wait here, before any per-socket work: what thousands of them
        # would do in the loop turn they arrive in is done a few at a time instead.
        async with ctx.registry.handshakes:
            sid = _check_upgrade(request, socketio)
            grants = _grants(ctx, sid, socketio, caller)
            clock = clock_of(request.transport)
            joined = splice.Splice(ctx, caller, socketio=socketio, sid=sid, clock=clock)
            await _splice(request, ctx, joined, upstream_url, upstream_headers)
        joined.names.adopt(grants)
        return web.Response(status=101)
    sid = _check_upgrade(request, socketio)
    grants = _grants(ctx, sid, socketio, caller)
    upstream = await _connect_upstream(ctx, upstream_url, upstream_headers, request)
    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoclose=False,
        autoping=False,
        max_msg_size=settings.max_message_size,
        compress=settings.compression,
        heartbeat=settings.heartbeat_seconds or None,
    )
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close(code=GOING_AWAY)
        raise
    link = _Link(ctx, client, upstream, caller, socketio, sid)
    link.names.adopt(grants)
    ctx.registry.track(link)
    ctx.metrics.websocket_connections.inc()
    # Idle sockets are the listener's to close (connections.websocket_idle_timeout):
    # every frame either way is activity, and the close is a close frame on both legs.
    link.clock = clock = clock_of(request.transport)
    if clock is not None:
        clock.upgraded(time.monotonic(), link.close_soon)
    try:
        await link.run()
    finally:
        ctx.registry.untrack(link)
        ctx.metrics.websocket_connections.dec()
    return client


def _check_upgrade(request: web.Request, socketio: bool) -> str | None:
    """Refuse what is no WebSocket upgrade; the Engine.IO sid it names, if any."""
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise bad_request("invalid WebSocket upgrade request")
    return sio.sid_of(request.query_string) if socketio else None


def _grants(ctx: RelayContext, sid: str | None, socketio: bool, caller: Caller) -> list[Grant]:
    """What the socket starts with: its polling session's CONNECTs, or (a plain WebSocket)
    the handshake's own principal."""
    if socketio:
        return ctx.registry.grants.take(sid)
    return [Grant("", caller.principal, caller.token)]


def _bytes_suffice(request: web.Request, settings: config.WebSocket) -> bool:
    """Whether the byte relay can carry this socket: no extension on either leg (a
    deflated frame cannot be read without inflating the stream) and no heartbeat of the
    proxy's own."""
    if settings.heartbeat_seconds or settings.upstream_compression:
        return False
    offered = ",".join(request.headers.getall("Sec-WebSocket-Extensions", ())).lower()
    return not (settings.compression and "permessage-deflate" in offered)


def _not_upgraded(ctx: RelayContext, status: int) -> ProxyError:
    """The upstream answered an upgrade with no 101: its 4xx is the client's to hear (the
    same status, `bad_request`), anything else is ours (502, counted)."""
    if 400 <= status < 500:
        message = f"the upstream refused the WebSocket upgrade (HTTP {status})"
        return ProxyError(BAD_REQUEST, message, status=status)
    ctx.metrics.count_upstream_failure(BAD_ANSWER)
    return ProxyError(
        UPSTREAM_UNAVAILABLE, "the upstream did not accept the WebSocket", cause=BAD_ANSWER
    )


async def _splice(
    request: web.Request,
    ctx: RelayContext,
    link: splice.Splice,
    url: URL,
    headers: Mapping[str, str] | CIMultiDict[str],
) -> None:
    """The upstream's 101 first, then the client's; from there the two connections are
    `link`'s, and aiohttp lets go of the client's (its handler returns at once)."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    offered = client_protocols(request)
    host = headers.get("Host") or url.raw_authority
    wire = handshake.upgrade_request(url.raw_path_qs, host, key, offered, headers.items())
    timeout = ctx.session.timeout
    try:
        upstream, answer = await splice.open_upstream(
            url.raw_host or "",
            url.port or 80,
            url.scheme in ("https", "wss"),
            wire,
            connect_timeout=timeout.connect or timeout.sock_connect,
            read_timeout=timeout.sock_read,
        )
    except (TimeoutError, OSError) as exc:
        raise ctx.metrics.upstream_failed(upstream_cause(exc) or RESET) from None
    head, _, rest = answer.done.result().partition(b"\r\n\r\n")
    verdict = handshake.read_answer(head, key, offered)
    if not verdict.accepted:
        upstream.close()
        raise _not_upgraded(ctx, verdict.status)
    client = request.transport
    handler = request.protocol
    if client is None or client.is_closing():
        upstream.close()
        raise ConnectionResetError("client went away")
    # What the client sent after its upgrade head, before the 101 (aiohttp keeps it).
    tail = bytes(getattr(handler, "_message_tail", b""))
    holder = client.get_protocol()
    if getattr(holder, "inner", None) is handler:
        # The listener's guard (`fastpath.doorway.Guarded`) stays, and keeps counting it.
        setattr(holder, "inner", link.client)  # noqa: B010 - not a layer realtime may import
    else:
        client.set_protocol(link.client)
    link.client.connection_made(client)
    client.write(
        handshake.switching_protocols(request.headers["Sec-WebSocket-Key"], verdict.protocol)
    )
    # aiohttp forgets the connection without closing it: its handler's answer (a 101
    # for the access log) then goes nowhere.
    handler.transport = None
    handler.connection_lost(None)
    upstream.set_protocol(link.upstream)
    link.upstream.connection_made(upstream)
    ctx.registry.track(link)  # `Splice.lost` untracks it
    ctx.metrics.websocket_connections.inc()
    if link.clock is not None:
        link.clock.upgraded(time.monotonic(), link.close_soon)
    if rest:
        link.upstream.data_received(rest)
    upstream.resume_reading()
    if tail:
        link.client.data_received(tail)


async def _connect_upstream(
    ctx: RelayContext,
    url: URL,
    headers: Mapping[str, str] | CIMultiDict[str],
    request: web.Request,
) -> aiohttp.ClientWebSocketResponse:
    # The handshake headers are the proxy's own per leg: the client's key, version and
    # extensions must not reach the upstream (deflate is negotiated per leg).
    clean = CIMultiDict(
        (k, v) for k, v in headers.items() if not k.lower().startswith("sec-websocket-")
    )
    settings = ctx.settings
    try:
        return await ctx.session.ws_connect(
            url,
            protocols=client_protocols(request),
            headers=clean,
            autoclose=False,
            autoping=False,
            max_msg_size=settings.max_message_size,
            compress=15 if settings.upstream_compression else 0,
            heartbeat=settings.heartbeat_seconds or None,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise _not_upgraded(ctx, exc.status) from None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ctx.metrics.upstream_failed(upstream_cause(exc) or RESET) from None


class _Link:
    """One client socket relayed to one upstream socket."""

    def __init__(
        self,
        ctx: RelayContext,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        caller: Caller,
        socketio: bool,
        sid: str | None,
    ) -> None:
        self.ctx, self.client, self.upstream = ctx, client, upstream
        self.socketio = socketio
        # Who each namespace acts as and when to look again (a plain WebSocket is watched
        # under ""): the byte relay's bookkeeping, told here how a namespace ends.
        self.names = Namespaces(ctx, caller, sid, self)
        self._ending = Background()
        self.attachments = 0  # binary frames the client announced (BINARY_EVENT/ACK)
        self.ended: tuple[int, str] | None = None  # how the first leg to end ended
        self.closing: asyncio.Future[tuple[bool | BaseException, bool | BaseException]] | None = (
            None
        )
        self.clock: ConnectionClock | None = None
        self._closer: asyncio.Task[None] | None = None
        m = ctx.metrics.websocket_messages
        self.up_count = m.labels("client_to_upstream")
        self.down_count = m.labels("upstream_to_client")

    # -- the pumps ----------------------------------------------------------------------

    async def run(self) -> None:
        pumps = [
            asyncio.create_task(self._pump(self.client, self.upstream, up=True)),
            asyncio.create_task(self._pump(self.upstream, self.client, up=False)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when aiohttp cancels the handler because the client's transport closed.
            self.names.stop()
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await self.close(*(self.ended or (GOING_AWAY, "")))

    async def close(self, code: int, reason: str) -> None:
        """Close both legs once, with the first code asked for; later callers wait for
        that same close (shielded: a cancelled caller must not abort the handshake)."""
        if self.closing is None:
            code = UNSENDABLE.get(code, code)
            message = reason.encode()[:123]
            self.closing = asyncio.gather(
                self.client.close(code=code, message=message),
                self.upstream.close(code=code, message=message),
                return_exceptions=True,
            )
        await asyncio.shield(self.closing)

    def close_soon(self, reason: str) -> None:
        """`close(1001)` from a callback (the listener's sweep)."""
        if self._closer is None:
            self._closer = asyncio.ensure_future(self.close(GOING_AWAY, reason))

    async def _pump(self, src: Socket, dst: Socket, *, up: bool) -> None:
        """Relay until `src` ends; the first leg to end says how both are closed."""
        ended = await self._relay(src, dst, up=up)
        if self.ended is None:
            self.ended = ended

    async def _relay(self, src: Socket, dst: Socket, *, up: bool) -> tuple[int, str]:
        count = self.up_count if up else self.down_count
        try:
            while True:
                msg = await src.receive()
                if self.clock is not None:
                    self.clock.frame(time.monotonic())
                kind = msg.type
                if kind is WSMsgType.TEXT:
                    text: str | None = msg.data
                    if self.socketio:
                        if not up:
                            if msg.data.startswith(_SERVER_GONE):
                                self.names.forget(msg.data)
                        elif msg.data.startswith(sio.CONNECT):
                            text = await self._connect(msg.data)
                        else:
                            self._from_client(msg.data)
                    if text is not None:
                        await dst.send_str(text)
                        count.inc()
                elif kind is WSMsgType.BINARY:
                    if up and self.socketio:
                        if self.attachments == 0:
                            raise Refused(UNSUPPORTED_DATA, "binary packet outside an attachment")
                        self.attachments -= 1
                    await dst.send_bytes(msg.data)
                    count.inc()
                elif kind is WSMsgType.PING:
                    await dst.ping(msg.data)
                elif kind is WSMsgType.PONG:
                    await dst.pong(msg.data)
                elif kind is WSMsgType.CLOSE:
                    return int(msg.data or 0), str(msg.extra or "")
                elif kind is WSMsgType.ERROR:
                    error_code = getattr(msg.data, "code", None)
                    if isinstance(error_code, int):  # aiohttp's WebSocketError, e.g. 1009
                        return error_code, str(msg.data.args[-1])
                    return 1011, "relay error"
                else:  # CLOSING/CLOSED: the connection dropped or we are closing it
                    return GOING_AWAY, ""
        except Refused as refused:
            return refused.code, refused.reason
        except (ConnectionError, aiohttp.ClientError):
            return GOING_AWAY, ""

    def _from_client(self, text: str) -> None:
        """Bookkeeping on client packets other than CONNECT (which are rewritten)."""
        if text.startswith("4") and sio.ambiguous_prefix(text):
            raise Refused(POLICY_VIOLATION, sio.AMBIGUOUS_PREFIX)
        if text.startswith(("45", "46")):
            self.attachments += sio.binary_attachments(text)
        elif text.startswith(sio.DISCONNECT):
            self.names.forget(text)
        elif text == _UPGRADE_PACKET:
            self.names.adopt_polling()

    async def _connect(self, text: str) -> str | None:
        out, refusal = await self.names.connect(text)
        if refusal is not None:  # Clerk is down: the client is told, nothing goes up
            await self.client.send_str(refusal)
        return out

    # -- expiry ---------------------------------------------------------------------------

    def namespace_over(self, namespace: str) -> None:
        """A namespace's principal must go (`Namespaces`): a plain WebSocket is closed
        with 1008, a Socket.IO namespace gets a DISCONNECT on both legs."""
        if not self.socketio:
            self._ending.spawn(self.close(POLICY_VIOLATION, "token expired"))
        else:
            self._ending.spawn(self._disconnect(sio.disconnect_packet(namespace)))

    async def _disconnect(self, packet: str) -> None:
        await asyncio.gather(
            self.client.send_str(packet), self.upstream.send_str(packet), return_exceptions=True
        )
