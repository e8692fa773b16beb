"""Test peers for the WebSocket relay and Socket.IO: a verifier whose tokens can expire,
be revoked or make Clerk "unavailable"; upstreams (a raw WebSocket one and a
python-socketio AsyncServer); and a minimal proxy app mounting `websocket.relay` directly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import socketio
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from proxy.config import model as config
from proxy.core.errors import TOKEN_INVALID, VERIFICATION_UNAVAILABLE, ProxyError
from proxy.core.principal import ANONYMOUS, Principal, Recent
from proxy.observe.metrics import Metrics
from proxy.realtime import handshake, polling, relays, websocket
from proxy.realtime import socketio as sio_codec

PARTNER = Principal(
    type="machine",
    id="mch_partner",
    token_type="m2m_token",
    token_id="mt_0123456789abcdef0123456789abcdef",
    scopes=frozenset({"scores:read"}),
    claims_json='{"tier":"gold"}',
)


@dataclass
class TokenBook:
    """token → Principal; `revoked` tokens turn invalid, `down` makes Clerk unavailable."""

    principals: dict[str, Principal] = field(default_factory=lambda: {"good": PARTNER})
    revoked: set[str] = field(default_factory=set)
    down: bool = False
    calls: list[str] = field(default_factory=list)

    def cached(self, token: str, recent: Recent | None = None) -> Principal | None:
        return None

    async def verify(self, token: str, client_ip: str) -> Principal:
        self.calls.append(token)
        if self.down:
            raise ProxyError(VERIFICATION_UNAVAILABLE, "Clerk is unavailable", retry_after=3)
        if token in self.revoked or token not in self.principals:
            raise ProxyError(TOKEN_INVALID, "the token is not valid")
        return self.principals[token]


def bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    return value[7:] if value.startswith("Bearer ") else None


# --- upstreams ---------------------------------------------------------------------------


@dataclass
class RawUpstream:
    """A WebSocket upstream that records every frame and close it sees."""

    frames: list[tuple[str, Any]] = field(default_factory=list)
    closes: list[tuple[int | None, str]] = field(default_factory=list)
    headers: list[CIMultiDict[str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        self.headers.append(CIMultiDict(request.headers))
        ws = web.WebSocketResponse(protocols=("b", "c"), max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                self.frames.append(("text", msg.data))
                if msg.data.startswith("close:"):
                    _, code, reason = msg.data.split(":", 2)
                    await ws.close(code=int(code), message=reason.encode())
                elif msg.data.startswith("big:"):
                    await ws.send_str("x" * int(msg.data[4:]))
                else:
                    await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self.frames.append(("binary", msg.data))
                await ws.send_bytes(msg.data)
        self.closes.append((ws.close_code, ""))
        return ws


@dataclass
class SioUpstream:
    """The live-scores API stand-in: records `auth` per connect and refuses private
    rooms to anonymous principals with an `error` event."""

    connects: list[tuple[str, Any]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    server: socketio.AsyncServer = field(init=False)

    def __post_init__(self) -> None:
        # A polling client's disconnect waits for its pending GET, which the server ends
        # only when the session times out (ping_interval + ping_timeout: 25 s by default).
        sio = socketio.AsyncServer(
            async_mode="aiohttp", namespaces="*", ping_interval=5, ping_timeout=5
        )
        self.server = sio
        principals: dict[tuple[str, str], dict[str, Any]] = {}

        @sio.on("connect", namespace="*")
        async def connect(namespace: str, sid: str, environ: dict[str, Any], auth: Any) -> None:
            self.connects.append((namespace, auth))
            self.headers.append({k[5:]: v for k, v in environ.items() if k.startswith("HTTP_")})
            principals[(namespace, sid)] = (auth or {}).get("principal", {"type": "anonymous"})

        @sio.on("disconnect", namespace="*")
        async def disconnect(namespace: str, sid: str, *args: Any) -> None:
            self.disconnects.append(namespace)

        @sio.on("whoami", namespace="*")
        async def whoami(namespace: str, sid: str, *args: Any) -> Any:
            return principals.get((namespace, sid))

        @sio.on("join", namespace="*")
        async def join(namespace: str, sid: str, room: str) -> str:
            who = principals.get((namespace, sid), {"type": "anonymous"})
            if room != "public" and who.get("type") == "anonymous":
                await sio.emit(
                    "error",
                    {"room": room, "reason": "authentication required"},
                    to=sid,
                    namespace=namespace,
                )
                return "refused"
            await sio.enter_room(sid, room, namespace=namespace)
            return "joined"

        @sio.on("echo", namespace="*")
        async def echo(namespace: str, sid: str, *args: Any) -> Any:
            return args[0] if len(args) == 1 else list(args)

    def app(self) -> web.Application:
        app = web.Application()
        self.server.attach(app)
        return app


# --- a minimal proxy mounting relay() directly ------------------------------------------

CTX = web.AppKey("relay_ctx", relays.RelayContext)


def relay_app(
    upstream: URL,
    book: TokenBook,
    settings: config.WebSocket | None = None,
    *,
    metrics: Metrics | None = None,
    reverify_seconds: float = 0.0,
    registry: relays.WebSocketRegistry | None = None,
) -> web.Application:
    """Stands in for the request path: Bearer → principal (optional auth), then relay()
    for upgrades; Socket.IO polling is forwarded with its POST bodies rewritten."""
    app = web.Application()
    registry = registry or relays.WebSocketRegistry()

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        app[CTX] = relays.RelayContext(
            session=session,
            settings=settings or config.WebSocket(),
            metrics=metrics or Metrics(),
            verifier=book,
            prefix="X-Auth-",
            registry=registry,
            reverify_seconds=reverify_seconds,
        )
        yield
        await registry.close_all()
        await session.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = app[CTX]
        token = bearer(request)
        principal = ANONYMOUS
        if token is not None:
            try:
                principal = await book.verify(token, "127.0.0.1")
            except ProxyError:
                principal = ANONYMOUS
        headers = CIMultiDict(
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in ("host", "connection", "upgrade", "authorization", "content-length")
            and not k.lower().startswith("x-auth-")
        )
        headers["X-Auth-Principal-Type"] = principal.type
        url = URL(str(upstream).rstrip("/") + request.raw_path, encoded=True)
        is_sio = request.path.startswith(sio_codec.PATH_PREFIX)
        caller = relays.Caller(principal, "127.0.0.1", token)
        try:
            if handshake.is_upgrade(request):
                return await websocket.relay(
                    request,
                    ctx,
                    caller,
                    upstream_url=url,
                    upstream_headers=headers,
                    socketio=is_sio,
                )
            body = await request.read()
            if is_sio:
                sio_codec.check_query(request.query_string)
                if request.method == "POST":
                    body = await polling.rewrite_polling(
                        body, ctx=ctx, query=request.query_string, caller=caller
                    )
            async with ctx.session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as resp:
                payload = await resp.read()
                keep = {
                    k: v
                    for k, v in resp.headers.items()
                    if k.lower() in ("content-type", "content-encoding")
                }
                return web.Response(status=resp.status, body=payload, headers=keep)
        except ProxyError as refusal:
            return web.Response(
                status=refusal.status, body=refusal.body(), headers=refusal.headers()
            )

    app.cleanup_ctx.append(lifespan)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def auth_of(packet: str) -> dict[str, Any]:
    """The JSON payload of a CONNECT as the upstream reads it."""
    _head, _, payload = sio_codec._split_head(packet)
    return dict(json.loads(payload)) if payload else {}


# --- the real proxy app -----------------------------------------------------------------


def real_app_available() -> str | None:
    """Why `proxy.app.create_app` cannot be used yet, or None."""
    try:
        import proxy.request.app  # noqa: F401
    except ImportError as exc:
        return f"proxy.request.app is not importable yet: {exc}"
    return None


def proxy_app(
    kind: str,
    upstream: URL,
    book: TokenBook,
    settings: config.WebSocket | None = None,
    *,
    metrics: Metrics | None = None,
    reverify_seconds: float = 0.0,
) -> web.Application:
    """`kind="app"`: the real request path (`create_app`, routes from tests/support.py,
    `/socket.io/**` and `/optional/**` optional); `kind="harness"`: `relay_app`."""
    if kind == "harness":
        return relay_app(
            upstream, book, settings, metrics=metrics, reverify_seconds=reverify_seconds
        )
    from proxy.request.app import create_app
    from tests.support import make_config

    ws = settings or config.WebSocket()
    cfg = make_config(
        str(upstream).rstrip("/"),
        websocket={
            "max_message_size": ws.max_message_size,
            "allowed_origins": list(ws.allowed_origins),
            "compression": ws.compression,
            "upstream_compression": ws.upstream_compression,
        },
        # The live-socket re-verification interval is the cache TTL.
        cache={"ttl_seconds": reverify_seconds or 60},
        # A long poll waits up to pingInterval (5 s here) at the upstream: the read timeout
        # must exceed pingInterval + pingTimeout, as in production (it raced at 5 s).
        upstream={"read_timeout": 30},
    )
    return create_app(cfg, verifier=book, metrics=metrics)


def registry_of(app: web.Application) -> relays.WebSocketRegistry:
    if CTX in app:
        return app[CTX].registry
    from proxy.request.app import PROXY

    return app[PROXY].ws_registry
