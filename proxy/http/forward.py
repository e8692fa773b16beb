"""Streaming HTTP forwarding to the upstream.

Bodies pass through byte for byte in both directions and are never buffered whole:
the client's framing is kept (Content-Length when it sent one), nothing is decompressed.
Failures are mapped by *who* failed: the upstream (502/504, counted) or the client
(gone mid-stream: the upstream request is cancelled and nothing is counted against it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from multidict import CIMultiDict
from yarl import URL

from proxy.core import errors
from proxy.core.errors import ProxyError
from proxy.core.timeouts import clock_of
from proxy.http.headers import for_client
from proxy.observe.metrics import Metrics

CHUNK = 64 * 1024
# Answers up to this size (with a Content-Length) are read whole and sent in one write.
SMALL_BODY = 64 * 1024


class ClientGone(Exception):
    """The downstream client went away; not an upstream failure."""


class CleanConnector(aiohttp.TCPConnector):
    """aiohttp's pool, handing out only clean connections. Bytes an upstream sends on a
    connection after its answer (an unsolicited second answer) wait in the connection's
    buffer, and aiohttp would read them as the next request's answer — another caller's
    request: a connection holding any is closed instead of reused."""

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        while True:
            conn = await super()._get(key, traces)
            if conn is None or conn.protocol is None or not conn.protocol.should_close:
                return conn
            conn.close()


def new_session(
    *, connect_timeout: float, read_timeout: float, pool_size: int
) -> aiohttp.ClientSession:
    """The one pooled session per app: no cookie jar (it would replay one caller's
    upstream cookies to the next), no decompression, no total timeout (long polls and
    streams are legitimate), no automatic headers beyond what the client sent."""
    return aiohttp.ClientSession(
        connector=CleanConnector(limit=pool_size, limit_per_host=pool_size, ttl_dns_cache=300),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout),
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        raise_for_status=False,
    )


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    base: URL

    def url(self, path: str, query: str | None) -> URL:
        """The upstream URL from the already-normalized path and the raw query,
        both kept exactly as they are (encoded=True: no re-quoting)."""
        target = path if query is None else f"{path}?{query}"
        return URL(str(self.base) + target, encoded=True)


def _body_length(request: web.Request) -> int | None:
    value = request.headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


def _too_large(limit: int) -> ProxyError:
    return ProxyError(errors.PAYLOAD_TOO_LARGE, f"request body exceeds the limit of {limit} bytes")


async def stream_request_body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The client's body chunk by chunk, refused past `limit` (0: unlimited). The time
    spent waiting for each chunk is the client's, and the connection's clock weighs it
    against the minimum body rate; the time between chunks (pushing upstream) is not."""
    seen = 0
    clock = clock_of(request.transport)
    content = request.content
    try:
        while True:
            if clock is not None:
                clock.body_wait(time.monotonic())
            chunk = await content.readany()
            if clock is not None:
                clock.body_chunk(len(chunk), time.monotonic())
            if not chunk:
                return
            seen += len(chunk)
            if limit and seen > limit:
                raise _too_large(limit)
            yield chunk
    except (ConnectionResetError, asyncio.IncompleteReadError, aiohttp.ClientPayloadError) as exc:
        raise ClientGone() from exc


async def read_request_body(request: web.Request, limit: int) -> bytes:
    """The whole body, for the few requests the proxy must rewrite (Socket.IO polling)."""
    if limit and (length := _body_length(request)) is not None and length > limit:
        raise _too_large(limit)
    return b"".join([chunk async for chunk in stream_request_body(request, limit)])


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


async def forward(
    request: web.Request,
    *,
    session: aiohttp.ClientSession,
    url: URL,
    headers: CIMultiDict[str],
    max_body_size: int,
    timeouts: aiohttp.ClientTimeout,
    metrics: Metrics,
    body: bytes | None = None,
) -> web.StreamResponse:
    """Send `request` to `url` and stream the answer back. Raises ProxyError before the
    response has started; after that, a failure can only abort the client connection.

    `body` replaces the client's body when the proxy rewrote it (Socket.IO polling)."""
    length = _body_length(request)
    if max_body_size and length is not None and length > max_body_size:
        raise _too_large(max_body_size)
    data: AsyncIterator[bytes] | bytes | None = None
    if body is not None:
        data = body
        headers["Content-Length"] = str(len(body))
    elif request.body_exists:
        data = stream_request_body(request, max_body_size)
        if length is not None:
            # Keep the client's framing: aiohttp only chunks when no length is given.
            headers["Content-Length"] = str(length)
    elif request.method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE"):
        headers["Content-Length"] = "0"

    started = time.perf_counter()
    try:
        upstream = await session.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            timeout=timeouts,
            compress=None,
            chunked=None,
        )
    except ProxyError:
        raise
    except Exception as exc:
        raise _map_upstream_error(exc, metrics) from None
    metrics.upstream_duration.observe(time.perf_counter() - started)
    if upstream.status < 200:
        # A 101 to a request that asked for no upgrade (interim answers never get here):
        # the connection is no longer HTTP. A 502, as the fast path and nginx answer.
        upstream.close()
        raise metrics.upstream_failed(errors.BAD_ANSWER)

    try:
        headers_out = for_client(upstream.headers.items())
        length = upstream.content_length
        if length is not None and length <= SMALL_BODY and _has_body(request, upstream.status):
            # The common API answer: one read, one write of headers and body together.
            try:
                body = await upstream.read()
            except Exception as exc:
                raise _map_upstream_error(exc, metrics) from None
            return web.Response(
                status=upstream.status, reason=upstream.reason, body=body, headers=headers_out
            )
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers_out)
        if not _has_body(request, upstream.status):
            # No body on the wire; aiohttp must not invent chunked framing either.
            await response.prepare(request)
            await response.write_eof()
            return response
        if "Content-Length" not in response.headers:
            if request.version >= (1, 1):
                response.enable_chunked_encoding()
            else:
                # An HTTP/1.0 client knows no chunks: the close ends the body, even when
                # it asked to keep the connection, and the answer says so.
                response.force_close()
                response.headers["Connection"] = "close"
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            transport = request.transport
            if transport is None or transport.is_closing():  # the client's side went away
                raise ClientGone() from exc
            raise
        await response.write_eof()
        return response
    finally:
        upstream.release() if upstream.content.at_eof() else upstream.close()


def _has_body(request: web.Request, status: int) -> bool:
    return status not in (204, 304) and request.method != "HEAD"


def _map_upstream_error(exc: Exception, metrics: Metrics) -> BaseException:
    if _find(exc, ClientGone) is not None:
        return ClientGone()
    refusal = _find(exc, ProxyError)
    if refusal is not None:
        return refusal
    cause = errors.upstream_cause(exc)
    if cause is None:
        return exc
    return metrics.upstream_failed(cause)
