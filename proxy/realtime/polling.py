"""Socket.IO over long-polling, on aiohttp's side: the CONNECT rewrite of a polling POST,
and the end of a namespace whose principal has expired while the session still polls.

The WebSocket relay (`websocket`) does the same for sessions that upgraded; the grants a
polling session earns are remembered in the registry's `GrantBook` for that upgrade.
"""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.core.principal import Principal
from proxy.realtime import socketio as sio
from proxy.realtime.relays import Caller, RelayContext


async def rewrite_polling(
    body: bytes,
    *,
    ctx: RelayContext,
    query: str,
    caller: Caller,
) -> bytes:
    """Rewrite the CONNECTs of a polling POST body and remember them for the upgrade.
    Raises ProxyError: 400 for what cannot be read, 503/429 when Clerk is unavailable."""

    async def verify(token: str) -> Principal:
        return await ctx.verifier.verify(token, caller.ip)

    out, grants = await sio.rewrite_polling_grants(
        body,
        header_principal=caller.principal,
        verify=verify,
        header_token=caller.token,
        header_refusal=caller.refusal,
    )
    for grant in grants:
        ctx.metrics.socketio_connects.labels(grant.principal.type).inc()
    sid = sio.sid_of(query)
    if grants and sid:
        ctx.registry.grants.remember(sid, grants)
    return out


async def end_expired_polling(
    *,
    ctx: RelayContext,
    query: str,
    client_ip: str,
    upstream_url: URL,
    upstream_headers: CIMultiDict[str],
) -> web.Response | None:
    """For a session that is still on long-polling: when a namespace's principal has
    expired (or no longer verifies), tell the upstream the client left that namespace and
    answer this poll with the DISCONNECT packets instead of forwarding it. None: forward."""

    async def verify(token: str) -> Principal:
        return await ctx.verifier.verify(token, client_ip)

    ended = await ctx.registry.grants.sweep(
        sio.sid_of(query), ctx.clock(), reverify_seconds=ctx.reverify_seconds, verify=verify
    )
    if not ended:
        return None
    packets = sio.RECORD_SEPARATOR.join(sio.disconnect_packet(ns).encode() for ns in ended)
    headers = CIMultiDict(upstream_headers)
    headers["Content-Type"] = "text/plain;charset=UTF-8"
    headers.pop("Content-Length", None)
    # One POST, as a client leaving those namespaces would send; its answer is only "ok".
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with ctx.session.post(upstream_url, data=packets, headers=headers) as answer:
            await answer.read()
    for _ in ended:
        ctx.metrics.socketio_disconnects.inc()
    return web.Response(body=packets, content_type="text/plain", charset="UTF-8")
