"""Shared test helpers: configs, a stub verifier, and an upstream that records what it got."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.config.load import Config, build_config
from proxy.core.errors import TOKEN_INVALID, ProxyError
from proxy.core.principal import Principal, Recent
from proxy.fastpath import listener
from proxy.request.app import PROXY


def config_dict(upstream_url: str = "http://127.0.0.1:1", **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "environment": "unit",
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstream": {"url": upstream_url, "connect_timeout": 2, "read_timeout": 5},
        "clerk": {"api_url": "http://127.0.0.1:1", "secret_key": "sk_test_unit"},
        "routes": [
            {"name": "health", "path": "/healthz", "methods": ["GET"], "auth": "public"},
            {"name": "public", "path": "/public/**", "auth": "public"},
            {"name": "optional", "path": "/optional/**", "auth": "optional"},
            {"name": "admin", "path": "/admin/**", "auth": "required", "scopes": ["scores:admin"]},
            {"name": "socketio", "path": "/socket.io/**", "auth": "optional"},
        ],
        "default_route": {"auth": "required"},
        "shutdown": {"grace_period": 5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def make_config(upstream_url: str = "http://127.0.0.1:1", **overrides: Any) -> Config:
    return build_config(config_dict(upstream_url, **overrides), file="test.yaml")


MACHINE = Principal(
    type="machine",
    id="mch_2xYpartner000000000000000001",
    token_type="m2m_token",
    token_id="mt_0123456789abcdef0123456789abcdef",
    scopes=frozenset({"mch_2xYscoresapi0000000000000001"}),
)
ADMIN = Principal(
    type="user",
    id="user_2xYadmin0000000000000000001",
    token_type="session_token",
    token_id="sess_2xYadmin",
    scopes=frozenset({"scores:admin"}),
    claims_json='{"org":"acme"}',
)


@dataclass
class StubVerifier:
    """Maps fixed token strings to principals; anything else is an invalid token."""

    principals: Mapping[str, Principal] = field(
        default_factory=lambda: {"good-machine": MACHINE, "good-admin": ADMIN}
    )
    calls: int = 0

    def cached(self, token: str, recent: Recent | None = None) -> Principal | None:
        return None

    async def verify(self, token: str, client_ip: str) -> Principal:
        self.calls += 1
        try:
            return self.principals[token]
        except KeyError:
            raise ProxyError(TOKEN_INVALID, "the token is not valid") from None


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_sha256: str
    body_len: int


@dataclass
class Recorder:
    seen: list[Seen] = field(default_factory=list)
    cancelled: int = 0

    @property
    def last(self) -> Seen:
        return self.seen[-1]


def upstream_app(recorder: Recorder) -> web.Application:
    """An upstream that streams everything and records what reached it."""

    async def record(request: web.Request) -> Seen:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        seen = Seen(
            request.method,
            request.raw_path,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            digest.hexdigest(),
            size,
        )
        recorder.seen.append(seen)
        return seen

    async def echo(request: web.Request) -> web.Response:
        seen = await record(request)
        return web.json_response(
            {
                "method": seen.method,
                "raw_path": seen.raw_path,
                "headers": seen.headers,
                "sha256": seen.body_sha256,
                "length": seen.body_len,
            },
            headers={"X-Upstream": "yes", "Connection": "X-Hop", "X-Hop": "drop-me"},
        )

    async def download(request: web.Request) -> web.StreamResponse:
        await record(request)
        size = int(request.query["size"])
        chunk = b"x" * (256 * 1024)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("length") == "1":
            response.content_length = size
        await response.prepare(request)
        left = 0 if request.method == "HEAD" else size
        while left > 0:
            n = min(left, len(chunk))
            await response.write(chunk[:n])
            left -= n
        await response.write_eof()
        return response

    async def gzipped(request: web.Request) -> web.Response:
        await record(request)
        body = gzip.compress(b'{"score": "2-1"}' * 100, mtime=0)
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(float(request.query.get("delay", "10")))
        return web.Response(text="late")

    async def forever(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(600):
                await response.write(b"tick\n")
                await asyncio.sleep(0.05)
        except (asyncio.CancelledError, ConnectionResetError):
            recorder.cancelled += 1
            raise
        return response

    async def status(request: web.Request) -> web.Response:
        await record(request)
        code = int(request.match_info["code"])
        headers = {"ETag": '"v1"'} if code == 304 else {}
        return web.Response(status=code, headers=headers)

    async def truncated(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"only ten b")
        assert request.transport is not None
        request.transport.close()  # the upstream dies mid-body
        return response

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/elsewhere")

    async def cookie(request: web.Request) -> web.Response:
        await record(request)
        response = web.json_response({"cookie": request.headers.get("Cookie")})
        response.set_cookie("upstream_session", "secret-of-" + request.query.get("who", "?"))
        return response

    app = web.Application()
    app.router.add_route("*", "/download", download)
    app.router.add_route("*", "/public/download", download)
    app.router.add_route("*", "/public/gzip", gzipped)
    app.router.add_route("*", "/public/slow", slow)
    app.router.add_route("*", "/public/forever", forever)
    app.router.add_route("*", "/public/status/{code}", status)
    app.router.add_route("*", "/public/redirect", redirect)
    app.router.add_route("*", "/public/truncated", truncated)
    app.router.add_route("*", "/public/cookie", cookie)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class FastPathServer(TestServer):
    """A TestServer whose listener is the proxy's own (`listener`), as `clerk-auth-proxy
    run` serves: with the fast path (the default), requests it does not take go to the
    app's aiohttp server; with `fast_path=False` aiohttp serves every connection, still
    timed and drained by the listener."""

    front: listener.FrontDoorServer | None = None

    def __init__(self, app: web.Application, *, fast_path: bool = True, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.fast_path = fast_path

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self._loop = loop
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        self.front = await listener.serve(
            self.app[PROXY], self.runner, self.host, self.port or 0, reuse_port=False,
            fast_path=self.fast_path,
        )
        self.host, self.port = self.front.sockets[0]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self.started and not self.closed and self.front is not None:
            grace = self.app[PROXY].runtime.config.shutdown.grace_period
            await self.front.drain(time.monotonic() + grace)
        await super().close()
