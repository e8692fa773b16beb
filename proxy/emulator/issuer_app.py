"""`IssuerEmulator`: an OAuth 2.0 issuer on a local socket (Authgear's client-credentials
tokens), with key rotation, switchable faults and call counts (docs/emulator.md).

Routes: `/.well-known/openid-configuration` and `/.well-known/oauth-authorization-server`
(the same document), `GET /oauth2/jwks` (with `Cache-Control: max-age`), `POST
/oauth2/token`, `POST /oauth2/introspect`. Everything under `/__emulator/` is a control
route for processes that cannot call the Python API. Never expose it beyond loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from aiohttp import web

from proxy.emulator.issuer_state import IssuerState, OAuthClient, Reply

ENDPOINTS: Final = ("discovery", "jwks", "token", "introspect")
FAULT_KINDS: Final = ("down", "slow", "error", "rate_limit")


@dataclass(frozen=True, slots=True)
class IssuerFault:
    kind: str
    seconds: float = 1.0  # slow
    status: int = 500  # error
    retry_after: int = 1  # rate_limit
    endpoints: tuple[str, ...] = ENDPOINTS
    times: int | None = None  # the next N requests only


def make_issuer_fault(kind: str, params: Mapping[str, Any]) -> IssuerFault:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault {kind!r}; one of {list(FAULT_KINDS)}")
    unknown = set(params) - {"seconds", "status", "retry_after", "endpoints", "times"}
    if unknown:
        raise ValueError(f"unknown fault parameters {sorted(unknown)}")
    values = dict(params)
    if "endpoints" in values:
        values["endpoints"] = tuple(values["endpoints"])
        if not set(values["endpoints"]) <= set(ENDPOINTS):
            raise ValueError(f"endpoints are {list(ENDPOINTS)}")
    fault = IssuerFault(kind, **values)
    if not 500 <= fault.status <= 599 or fault.seconds < 0 or fault.retry_after < 0:
        raise ValueError("status must be 5xx; seconds and retry_after not negative")
    if fault.times is not None and fault.times < 1:
        raise ValueError("times must be at least 1")
    return fault


class IssuerEmulator(IssuerState):
    """One emulated issuer: `.app` (aiohttp), `.calls` (per endpoint), faults, keys."""

    def __init__(
        self,
        issuer: str = "http://127.0.0.1:3200",
        *,
        algorithm: str = "RS256",
        jwks_max_age: int = 300,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(issuer, algorithm=algorithm, now=now)
        self.jwks_max_age = jwks_max_age
        self.calls: Counter[str] = Counter()
        self.faults: dict[str, IssuerFault] = {}
        self.app = self._build_app()

    def set_fault(self, kind: str, **params: Any) -> None:
        """down, slow(seconds), error(status), rate_limit(retry_after); each takes
        endpoints=[discovery, jwks, token, introspect] (default all) and times=N."""
        self.faults[kind] = make_issuer_fault(kind, params)

    def clear_faults(self) -> None:
        self.faults.clear()

    def _take_faults(self, endpoint: str) -> list[IssuerFault]:
        hit = [f for k in FAULT_KINDS if (f := self.faults.get(k)) and endpoint in f.endpoints]
        for fault in hit:
            if fault.times is not None:
                if fault.times <= 1:
                    del self.faults[fault.kind]
                else:
                    self.faults[fault.kind] = replace(fault, times=fault.times - 1)
        return hit

    def _route(
        self, endpoint: str, handler: Callable[[web.Request], Awaitable[Reply]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            self.calls[endpoint] += 1
            faults = {f.kind: f for f in self._take_faults(endpoint)}
            if "down" in faults:
                if request.transport is not None:
                    request.transport.close()
                raise web.HTTPServiceUnavailable()  # never reaches the client
            if "slow" in faults:
                await asyncio.sleep(faults["slow"].seconds)
            if "rate_limit" in faults:
                limited = faults["rate_limit"]
                return _reply(
                    (429, {"error": "rate_limited"}, {"Retry-After": str(limited.retry_after)})
                )
            if "error" in faults:
                return _reply((faults["error"].status, {"error": "server_error"}, {}))
            return _reply(await handler(request))

        return route

    async def _discovery(self, request: web.Request) -> Reply:
        return 200, self.metadata(), {}

    async def _jwks(self, request: web.Request) -> Reply:
        return 200, self.jwks(), {"Cache-Control": f"public, max-age={self.jwks_max_age}"}

    async def _form(self, request: web.Request) -> dict[str, str] | None:
        if request.content_type != "application/x-www-form-urlencoded":
            return None
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def _token(self, request: web.Request) -> Reply:
        form = await self._form(request)
        if form is None:
            return 400, {"error": "invalid_request", "error_description": "send a form"}, {}
        return self.token(form, request.headers.get("Authorization"))

    async def _introspect(self, request: web.Request) -> Reply:
        form = await self._form(request)
        if form is None:
            return 400, {"error": "invalid_request", "error_description": "send a form"}, {}
        return self.introspect(form, request.headers.get("Authorization"))

    def _build_app(self) -> web.Application:
        app = web.Application()
        discovery = self._route("discovery", self._discovery)
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/.well-known/oauth-authorization-server", discovery)
        app.router.add_get("/oauth2/jwks", self._route("jwks", self._jwks))
        app.router.add_post("/oauth2/token", self._route("token", self._token))
        app.router.add_post("/oauth2/introspect", self._route("introspect", self._introspect))
        control = IssuerControl(self)
        app.router.add_get("/__emulator/calls", control.calls)
        app.router.add_post("/__emulator/faults", control.set_fault)
        app.router.add_delete("/__emulator/faults", control.clear_faults)
        app.router.add_post("/__emulator/clients", control.add_client)
        app.router.add_post("/__emulator/rotate", control.rotate)
        return app


def _reply(reply: Reply) -> web.Response:
    status, body, headers = reply
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


class IssuerControl:
    """`/__emulator/…`: not part of any issuer's API; nothing here is counted in calls."""

    def __init__(self, emu: IssuerEmulator) -> None:
        self.emu = emu

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='{"error": "body is not JSON"}') from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": "body is not a JSON object"}')
        return body

    async def calls(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.emu.calls))

    async def set_fault(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            self.emu.set_fault(str(body.pop("kind", "")), **body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({k: asdict(f) for k, f in self.emu.faults.items()})

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.emu.clear_faults()
        return web.json_response({})

    async def add_client(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            client = self.emu.add_client(**body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(client))

    async def rotate(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            kid = self.emu.rotate_key(body.get("algorithm"), body.get("kid"))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"kid": kid})


DEMO_RESOURCE: Final = "https://api.scores.example"


def seed_issuer_demo(emu: IssuerEmulator) -> OAuthClient:
    """The demo's partner: a machine client granted scores:read on the scores API."""
    return emu.add_client(
        "scores-partner-svc",
        resources={DEMO_RESOURCE: ("scores:read", "feeds:read")},
    )


@dataclass(frozen=True, slots=True)
class RunningIssuer:
    emulator: IssuerEmulator
    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_issuer(host: str, port: int, **options: Any) -> RunningIssuer:
    """Start an issuer emulator on host:port (0: a free port); its issuer is its URL."""
    emu = IssuerEmulator(**options)
    runner = web.AppRunner(emu.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    url = f"http://{host}:{runner.addresses[0][1]}"
    emu.issuer = url
    return RunningIssuer(emu, runner, url)


async def _run_forever(host: str, port: int) -> None:
    running = await serve_issuer(host, port)
    client = seed_issuer_demo(running.emulator)
    print(
        json.dumps(
            {
                "issuer": running.url,
                "token_endpoint": f"{running.url}/oauth2/token",
                "client_id": client.client_id,
                "client_secret": client.client_secret,
                "resource": DEMO_RESOURCE,
                "scopes": list(client.resources[DEMO_RESOURCE]),
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.close()


def run_issuer_emulator(host: str, port: int) -> None:
    """Blocking: serve until SIGINT/SIGTERM; prints the demo client as one JSON line."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_forever(host, port))
    sys.stdout.flush()
