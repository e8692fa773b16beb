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
from proxy.core.errors import BAD_REQUEST, ProxyError
from proxy.core.principal import Principal
from proxy.http.forward import forward, read_request_body
from proxy.observe.metrics import Metrics
from proxy.realtime import handshake, polling, websocket
from proxy.realtime import socketio as sio

if TYPE_CHECKING:
    from proxy.request.runtime import Runtime


async def dispatch(
    request: web.Request,
    *,
    session: aiohttp.ClientSession,
    rt: Runtime,
    metrics: Metrics,
    registry: websocket.WebSocketRegistry,
    url: URL,
    upstream_headers: CIMultiDict[str],
    principal: Principal,
    ip: str,
) -> web.StreamResponse:
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

    is_sio = request.path.startswith("/socket.io/")
    if not is_sio and "Upgrade" not in request.headers:
        return await onward()
    token = tokens.extract_bearer(request.headers.getall("Authorization", ()))
    ctx = websocket.RelayContext(
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
            ctx=ctx,
            upstream_url=url,
            upstream_headers=upstream_headers,
            principal=principal,
            client_ip=ip,
            socketio=is_sio,
            header_token=token,
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
        raise ProxyError(BAD_REQUEST, "compressed Socket.IO POST bodies are not supported")
    body = await read_request_body(request, rt.config.upstream.max_body_size)
    body = await polling.rewrite_polling(
        body,
        ctx=ctx,
        query=request.query_string,
        principal=principal,
        client_ip=ip,
        header_token=token,
    )
    # Sent once, never retried: a duplicated polling POST kills the Engine.IO session.
    return await onward(body)
