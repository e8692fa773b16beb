"""`IssuerEmulator`: an OAuth 2.0 issuer on a local socket (Authgear's client-credentials
tokens), with key rotation, switchable faults and call counts (docs/emulator.md).

Routes: `/.well-known/openid-configuration` and `/.well-known/oauth-authorization-server`
(the same document), `GET /oauth2/jwks` (with `Cache-Control: max-age`), `POST
/oauth2/token`, `POST /oauth2/introspect`. Everything under `/__emulator/` is a control
route for processes that cannot call the Python API. Never expose it beyond loopback.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any, Final

from aiohttp import web

from proxy.emulator.control import Control, Emulated, Fault, Faults, bad, json_answer
from proxy.emulator.issuer_state import IssuerState, OAuthClient, Reply
from proxy.emulator.serving import Running, run_until_signal, start

ENDPOINTS: Final = ("discovery", "jwks", "token", "introspect")
# Applied in this order: a slow answer can still be an error; a dropped one is nothing.
FAULT_ORDER: Final = ("down", "slow", "rate_limit", "error")


def _fault_answer(fault: Fault) -> web.Response:
    if fault.kind == "rate_limit":
        return json_answer(429, {"error": "rate_limited"}, {"Retry-After": str(fault.retry_after)})
    return json_answer(fault.status, {"error": "server_error"}, {})


class IssuerEmulator(Emulated, IssuerState):
    """One emulated issuer: `.app` (aiohttp), `.calls` (per endpoint), faults, keys.
    `set_fault`: down, slow(seconds), error(status), rate_limit(retry_after); each takes
    endpoints=[discovery, jwks, token, introspect] (default all) and times=N."""

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
        self.calls = Counter()
        self.faults = Faults(FAULT_ORDER, ENDPOINTS)
        self.app = self._build_app()

    def _route(
        self, endpoint: str, handler: Callable[[web.Request], Awaitable[Reply]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            faulted = await self.faulted(request, endpoint, _fault_answer)
            return faulted or json_answer(*await handler(request))

        return route

    async def _discovery(self, request: web.Request) -> Reply:
        return 200, self.metadata(), {}

    async def _jwks(self, request: web.Request) -> Reply:
        return 200, self.jwks(), {"Cache-Control": f"public, max-age={self.jwks_max_age}"}

    @staticmethod
    def _posted(
        answer: Callable[[Mapping[str, str], str | None], Reply],
    ) -> Callable[[web.Request], Awaitable[Reply]]:
        """A form endpoint (`token`, `introspect`): `answer` of its form and Authorization."""

        async def handler(request: web.Request) -> Reply:
            if request.content_type != "application/x-www-form-urlencoded":
                return 400, {"error": "invalid_request", "error_description": "send a form"}, {}
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
            return answer(form, request.headers.get("Authorization"))

        return handler

    def _build_app(self) -> web.Application:
        app = web.Application()
        discovery = self._route("discovery", self._discovery)
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/.well-known/oauth-authorization-server", discovery)
        app.router.add_get("/oauth2/jwks", self._route("jwks", self._jwks))
        app.router.add_post("/oauth2/token", self._route("token", self._posted(self.token)))
        introspect = self._route("introspect", self._posted(self.introspect))
        app.router.add_post("/oauth2/introspect", introspect)
        control = IssuerControl(self, app)
        app.router.add_post("/__emulator/clients", control.add_client)
        app.router.add_post("/__emulator/rotate", control.rotate)
        return app


class IssuerControl(Control["IssuerEmulator"]):
    """The issuer's control routes beyond calls and faults: clients and keys."""

    async def add_client(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            client = self.emu.add_client(**body)
        except (ValueError, TypeError) as exc:
            return bad(str(exc))
        return web.json_response(asdict(client))

    async def rotate(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            kid = self.emu.rotate_key(body.get("algorithm"), body.get("kid"))
        except ValueError as exc:
            return bad(str(exc))
        return web.json_response({"kid": kid})


DEMO_RESOURCE: Final = "https://api.scores.example"


def seed_issuer_demo(emu: IssuerEmulator) -> OAuthClient:
    """The demo's partner: a machine client granted scores:read on the scores API."""
    return emu.add_client(
        "scores-partner-svc",
        resources={DEMO_RESOURCE: ("scores:read", "feeds:read")},
    )


async def serve_issuer(host: str, port: int, **options: Any) -> Running[IssuerEmulator]:
    """Start an issuer emulator on host:port (0: a free port); its issuer is its URL."""
    emu = IssuerEmulator(**options)
    running = await start(emu, emu.app, host, port)
    emu.issuer = running.url
    return running


def _demo_line(running: Running[IssuerEmulator]) -> dict[str, Any]:
    client = seed_issuer_demo(running.emulator)
    return {
        "issuer": running.url,
        "token_endpoint": f"{running.url}/oauth2/token",
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "resource": DEMO_RESOURCE,
        "scopes": list(client.resources[DEMO_RESOURCE]),
    }


def run_issuer_emulator(host: str, port: int) -> None:
    """Blocking: serve until SIGINT/SIGTERM; prints the demo client as one JSON line."""
    run_until_signal(lambda: serve_issuer(host, port), _demo_line)
