"""Where an admitted request on aiohttp's side goes: the WebSocket relay, Socket.IO
long-polling (CONNECT packets in POST bodies rewritten, sessions whose token expired
ended), or plain streaming forwarding. The fast path (frontdoor) takes none of these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.auth import tokens
from proxy.core.errors import bad_request
from proxy.core.principal import Principal
from proxy.http.forward import forward, read_request_body
from proxy.observe.metrics import Metrics
from proxy.realtime import handshake, polling, relays, websocket
from proxy.realtime import socketio as sio

if TYPE_CHECKING:
    from proxy.request.runtime import Runtime


async def expect_later(request: web.Request) -> None:
    """The route's expect handler: promises nothing before the request is admitted
    (aiohttp's default answers `100 Continue` before any handler runs; a request refused
    with 401 would have invited its body for nothing). See `continue_if_expected`."""


async def continue_if_expected(request: web.Request) -> None:
    """RFC 9110 §10.1.1, nginx's way: the proxy itself answers `100 Continue` to an
    admitted HTTP/1.1 request that expects it, and `Expect` is not forwarded (`headers`),
    so no upstream is waited on for a 100 it may never send. Other expectations are
    ignored, as nginx does."""
    if (
        request.version == aiohttp.HttpVersion11
        and request.body_exists
        and request.headers.get("Expect", "").lower() == "100-continue"
    ):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer's own size starts after the 100


async def dispatch(
    request: web.Request,
    *,
    session: aiohttp.ClientSession,
    rt: Runtime,
    metrics: Metrics,
    registry: relays.WebSocketRegistry,
    url: URL,
    upstream_headers: CIMultiDict[str],
    principal: Principal,
    ip: str,
    refusal: str | None = None,
) -> web.StreamResponse:
    """`refusal`: why `principal` is anonymous on an `optional` route, when a token was
    refused (Socket.IO CONNECTs carry it to the upstream)."""

    async def onward(body: bytes | None = None) -> web.StreamResponse:
        return await forward(
            request,
            session=session,
            url=url,
            headers=upstream_headers,
            max_body_size=rt.config.upstream.max_body_size,
            timeouts=rt.timeout,
            metrics=metrics,
            body=body,
        )

    await continue_if_expected(request)
    is_sio = request.path.startswith(sio.PATH_PREFIX)
    if not is_sio and "Upgrade" not in request.headers:
        return await onward()
    token = tokens.extract_bearer(request.headers.getall("Authorization", ()))
    caller = relays.Caller(principal, ip, token, refusal)
    ctx = relays.RelayContext(
        session=session,
        settings=rt.config.websocket,
        metrics=metrics,
        verifier=rt.verifier,
        prefix=rt.config.headers.prefix,
        registry=registry,
        reverify_seconds=rt.config.cache.ttl_seconds,
    )
    if handshake.is_upgrade(request):
        return await websocket.relay(
            request,
            ctx,
            caller,
            upstream_url=url,
            upstream_headers=upstream_headers,
            socketio=is_sio,
        )
    if not is_sio:  # another Upgrade (h2c…): plain HTTP, Upgrade/Connection stripped
        return await onward()
    sio.check_query(request.query_string)
    if request.method != "POST":  # handshake and long-poll GETs pass through as they are
        ended = await polling.end_expired_polling(
            ctx=ctx,
            query=request.query_string,
            client_ip=ip,
            upstream_url=url,
            upstream_headers=upstream_headers,
        )
        return ended or await onward()
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise bad_request("compressed Socket.IO POST bodies are not supported")
    body = await read_request_body(request, rt.config.upstream.max_body_size)
    body = await polling.rewrite_polling(body, ctx=ctx, query=request.query_string, caller=caller)
    # Sent once, never retried: a duplicated polling POST kills the Engine.IO session.
    return await onward(body)
