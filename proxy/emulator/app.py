"""A Clerk Backend API emulator: the real wire contract on a local socket, plus faults.

Used by the test suite, `make demo`, the benchmark and users' own integration tests
(docs/emulator.md). The Clerk routes answer at both `/v1/...` and the unversioned path.
Everything under `/__emulator/` is NOT Clerk's: it lets out-of-process users mint tokens,
switch faults and read call counts. Never expose an emulator beyond loopback.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Final

from aiohttp import web

from proxy.emulator.backend import BackendApi
from proxy.emulator.control import Control, Emulated, Fault, Faults, bad, json_answer
from proxy.emulator.serving import Running, run_until_signal, start
from proxy.emulator.state import DEFAULT_SECRET_KEY, IssuedToken, Machine
from proxy.emulator.wire import Answer, Refused, clerk_error, not_found, unauthenticated

__all__ = [
    "ClerkEmulator",
    "IssuedToken",
    "Machine",
    "Running",
    "run_emulator",
    "seed_demo",
    "serve",
]

VERIFY_ENDPOINTS: Final = ("m2m_verify", "oauth_verify", "api_key_verify")
# Applied in this order: a slow answer can still be an error; a dropped one is nothing.
FAULT_ORDER: Final = ("down", "slow", "unauthorized", "rate_limit", "error")
# By default a fault hits the verify routes; `jwks=True` and `create=True` add these.
FAULT_OPTIONS: Final = {"jwks": ("jwks",), "create": ("m2m_create", "m2m_list", "m2m_revoke")}


def fault_answer(fault: Fault) -> web.Response:
    """What Clerk would answer in this failure."""
    if fault.kind == "unauthorized":
        return _json(unauthenticated("The provided Clerk Secret Key is invalid (emulator fault)."))
    if fault.kind == "rate_limit":
        limited = clerk_error(
            429, "too_many_requests", "Too many requests", "Too many requests, retry later."
        )
        return _json(Answer(429, limited.body, {"Retry-After": str(fault.retry_after)}))
    return _json(
        clerk_error(
            fault.status,
            "internal_clerk_error",
            "Oops, an unexpected error occurred",
            "There was an internal error on our servers (emulator fault).",
        )
    )


Handler = Callable[[web.Request, bytes], Answer]


class ClerkEmulator(Emulated, BackendApi):
    """One emulated Clerk instance with its aiohttp app (`.app`), faults and call counts.
    `set_fault`: slow(seconds), error(status), rate_limit(retry_after), down, unauthorized;
    each also takes jwks=, create= (extra endpoints) or endpoints=, and times=."""

    def __init__(
        self, secret_key: str = DEFAULT_SECRET_KEY, *, now: Callable[[], float] = time.time
    ) -> None:
        super().__init__(secret_key, now=now)
        self.calls = Counter()
        self.faults = Faults(FAULT_ORDER, VERIFY_ENDPOINTS, FAULT_OPTIONS)
        self.app = self._build_app()

    # -- HTTP -------------------------------------------------------------------------

    def _clerk_route(
        self, endpoint: str, handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            faulted = await self.faulted(request, endpoint, fault_answer)
            if faulted is not None:
                return faulted
            try:
                return _json(handler(request, await request.read()))
            except Refused as refused:
                return _json(refused.answer)

        return route

    def _build_app(self) -> web.Application:
        auth = _authorization
        clerk: list[tuple[str, str, str, Handler]] = [
            ("POST", "/m2m_tokens", "m2m_create", lambda r, b: self.create_m2m(auth(r), b)),
            ("GET", "/m2m_tokens", "m2m_list", lambda r, b: self.list_m2m(auth(r), r.query)),
            ("POST", "/m2m_tokens/verify", "m2m_verify", lambda r, b: self.verify_m2m(auth(r), b)),
            (
                "POST",
                "/m2m_tokens/{token_id}/revoke",
                "m2m_revoke",
                lambda r, b: self.revoke_m2m(auth(r), r.match_info["token_id"], b),
            ),
            (
                "POST",
                "/oauth_applications/access_tokens/verify",
                "oauth_verify",
                lambda r, b: self.verify_oauth(auth(r), b),
            ),
            (
                "POST",
                "/api_keys/verify",
                "api_key_verify",
                lambda r, b: self.verify_api_key(auth(r), b),
            ),
            ("GET", "/jwks", "jwks", lambda r, b: self.jwks(auth(r))),
        ]
        app = web.Application()
        for method, path, endpoint, handler in clerk:
            route = self._clerk_route(endpoint, handler)
            app.router.add_route(method, "/v1" + path, route)
            app.router.add_route(method, path, route)
        control = EmulatorControl(self, app)
        app.router.add_post("/__emulator/reset", control.reset)
        app.router.add_post("/__emulator/machines", control.machines)
        app.router.add_post("/__emulator/m2m_tokens", control.m2m_tokens)
        app.router.add_post("/__emulator/session_tokens", control.session_tokens)
        app.router.add_post("/__emulator/api_keys", control.api_keys)
        app.router.add_post("/__emulator/oauth_tokens", control.oauth_tokens)
        app.router.add_route("*", "/{tail:.*}", _unknown_route)
        return app


def _authorization(request: web.Request) -> str | None:
    return request.headers.get("Authorization")


def _json(answer: Answer) -> web.Response:
    return json_answer(answer.status, answer.body, answer.headers)


async def _unknown_route(request: web.Request) -> web.Response:
    return _json(not_found())


def _minted(make: Callable[[], Any], required: str, key: str | None = None) -> web.Response:
    """What `make` minted (`{key: it}`, or its fields), or a 400 saying why not."""
    try:
        made = make()
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:200]
        return bad(
            f'"{required}" is required; other keys are the Python method\'s options ({detail})'
        )
    return web.json_response(asdict(made) if key is None else {key: made})


class EmulatorControl(Control["ClerkEmulator"]):
    """Clerk's control routes beyond calls and faults: reset, and minting."""

    async def reset(self, request: web.Request) -> web.Response:
        """Faults and call counts back to zero; machines and tokens stay."""
        self.emu.clear_faults()
        self.emu.calls.clear()
        return web.json_response({})

    async def machines(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name, scoped = body.get("name", "machine"), body.get("scoped_machines", [])
        if not isinstance(name, str) or not isinstance(scoped, list):
            return bad('"name" must be a string and "scoped_machines" a list')
        return web.json_response(asdict(self.emu.create_machine(name, scoped)))

    async def m2m_tokens(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return _minted(
            lambda: self.emu.create_m2m_token(body.pop("machine_id"), **body), "machine_id"
        )

    async def session_tokens(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return _minted(
            lambda: self.emu.mint_session_jwt(body.pop("user_id"), **body), "user_id", "token"
        )

    async def api_keys(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return _minted(
            lambda: self.emu.create_api_key(body.pop("subject"), **body), "subject", "secret"
        )

    async def oauth_tokens(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body.pop("token_format", "opaque") == "jwt":
            return _minted(
                lambda: self.emu.mint_oauth_jwt(body.pop("user_id"), **body), "user_id", "token"
            )
        return _minted(lambda: self.emu.create_oauth_token(**body), "user_id", "token")


def seed_demo(emu: ClerkEmulator) -> dict[str, str]:
    """The `make demo` fixture: machine "scores-partner" may call machine "scores-api";
    one opaque M2M token (24 h) for the partner."""
    api = emu.create_machine("scores-api")
    partner = emu.create_machine("scores-partner", scoped_machines=[api.id])
    token = emu.create_m2m_token(partner.id, seconds_until_expiration=86400)
    return {
        "secret_key": emu.secret_key,
        "scores_api_machine_id": api.id,
        "scores_api_machine_secret_key": api.secret_key,
        "scores_partner_machine_id": partner.id,
        "scores_partner_machine_secret_key": partner.secret_key,
        "m2m_token_id": token.id,
        "m2m_token_secret": token.secret,
    }


async def serve(
    host: str, port: int, *, secret_key: str = DEFAULT_SECRET_KEY
) -> Running[ClerkEmulator]:
    """Start an emulator on host:port (0 picks a free port); `close()` the result to stop."""
    emu = ClerkEmulator(secret_key)
    return await start(emu, emu.app, host, port)


def run_emulator(host: str, port: int, secret_key: str) -> None:
    """Blocking: serve until SIGINT/SIGTERM; prints the seeded demo tokens as one JSON line."""
    run_until_signal(
        lambda: serve(host, port, secret_key=secret_key),
        lambda running: {"url": running.url, **seed_demo(running.emulator)},
    )
