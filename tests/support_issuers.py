"""A stack with other OAuth issuers: the issuer emulator(s) on real sockets, the Clerk
emulator, a recording upstream and the proxy (real verifier), all on loopback."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.config.load import build_config
from proxy.emulator.app import ClerkEmulator
from proxy.emulator.issuer_app import IssuerEmulator
from proxy.request.app import PROXY, create_app
from tests.support import Recorder, config_dict

API = "https://api.scores.example"

ROUTES: list[dict[str, Any]] = [
    {"name": "matches", "path": "/api/v1/matches/**", "auth": "required"},
    {"name": "admin", "path": "/api/v1/admin/**", "auth": "required", "scopes": ["scores:admin"]},
    {
        "name": "feeds",
        "path": "/api/v1/feeds/**",
        "auth": "required",
        "issuers": {"authgear": {"scopes": ["feeds:read"], "principal_types": ["machine"]}},
    },
    {
        "name": "partners",
        "path": "/api/v1/partners/**",
        "auth": "required",
        "issuers": {"clerk": {}, "authgear": {"clients": ["svc-a"]}},
    },
    {
        "name": "clerk-machines",
        "path": "/api/v1/clerk-machines/**",
        "auth": "required",
        "machines": ["mch_2xPartner"],
    },
    {"name": "socketio", "path": "/socket.io/**", "auth": "optional"},
]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class IssuerStack:
    issuers: dict[str, IssuerEmulator]
    clerk: ClerkEmulator
    proxy: TestServer
    recorder: Recorder
    client: aiohttp.ClientSession
    urls: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return str(self.proxy.make_url(path))

    async def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, Any], Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.client.get(self.url(path), headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.json()

    def metrics(self) -> str:
        return self.proxy.app[PROXY].metrics.render().decode()


async def token_for(
    session: aiohttp.ClientSession,
    issuer_url: str,
    client_id: str,
    secret: str,
    resource: str = API,
    **form: str,
) -> str:
    """A client-credentials token from the emulator's real token endpoint (Basic auth)."""
    async with session.post(
        f"{issuer_url}/oauth2/token",
        data={"grant_type": "client_credentials", "resource": resource, **form},
        headers={"Authorization": basic(client_id, secret)},
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["access_token"])


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then base64."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


IssuerEntry = Callable[[str], dict[str, Any]]


def authgear_entry(url: str) -> dict[str, Any]:
    return {"name": "authgear", "preset": "authgear", "issuer": url, "audiences": [API]}


@pytest.fixture
async def issuer_stack(aiohttp_server: Any) -> AsyncIterator[Any]:
    sessions: list[aiohttp.ClientSession] = []

    async def build(
        entries: dict[str, IssuerEntry] | None = None,
        *,
        routes: list[dict[str, Any]] | None = None,
        emulator_options: dict[str, Any] | None = None,
        faults: dict[str, dict[str, Any]] | None = None,
        clerk_issuer: bool = True,
        **overrides: Any,
    ) -> IssuerStack:
        entries = entries if entries is not None else {"authgear": authgear_entry}
        clerk = ClerkEmulator("sk_test_issuers")
        clerk_server = await aiohttp_server(clerk.app)
        issuers: dict[str, IssuerEmulator] = {}
        urls: dict[str, str] = {}
        raw_issuers = []
        for name, entry in entries.items():
            emu = IssuerEmulator(**(emulator_options or {}))
            # Before the proxy starts: it fetches every issuer's keys at start-up.
            for kind, params in (faults or {}).items():
                emu.set_fault(kind, **params)
            server = await aiohttp_server(emu.app)
            emu.issuer = urls[name] = str(server.make_url("")).rstrip("/")
            issuers[name] = emu
            raw_issuers.append(entry(urls[name]))
        recorder = Recorder()
        from tests.support import upstream_app

        upstream = await aiohttp_server(upstream_app(recorder))
        raw = config_dict(str(upstream.make_url("")).rstrip("/"), routes=routes or ROUTES)
        raw["clerk"] = {
            "api_url": str(clerk_server.make_url("")).rstrip("/"),
            "secret_key": "sk_test_issuers",
        }
        if clerk_issuer:
            raw["clerk"]["issuer"] = clerk.issuer
        raw["issuers"] = raw_issuers
        raw.update(overrides)
        config = build_config(raw, file="issuers.yaml")
        proxy = await aiohttp_server(create_app(config))
        proxy.app[PROXY].warm()  # as the process does once its listeners are bound
        client = aiohttp.ClientSession()
        sessions.append(client)
        return IssuerStack(issuers, clerk, proxy, recorder, client, urls)

    yield build
    for session in sessions:
        await session.close()
