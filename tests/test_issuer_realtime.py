"""Socket.IO and WebSocket take another issuer's tokens exactly as they take Clerk's:
the principal in CONNECT (with its issuer), the anonymous fallback for a bad token, the
REST 401, and the disconnect at expiry — with the real verifier and the issuer emulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestServer

from proxy.config.load import build_config
from proxy.emulator.issuer_app import IssuerEmulator
from proxy.request.app import create_app
from tests.support import config_dict
from tests.support_issuers import API
from tests.support_socketio import SioUpstream

# WebSocket here; polling in one test of its own below (a polling session's teardown
# waits out the upstream's session timeout, 10 s, once per test; polling's expiry is the same
# code for any Principal, covered with Clerk's in test_socketio_e2e.py).
TRANSPORTS = [["websocket"]]


@dataclass
class Rig:
    issuer: IssuerEmulator
    upstream: SioUpstream
    proxy: TestServer

    @property
    def url(self) -> str:
        return str(self.proxy.make_url("")).rstrip("/")

    def token(self, lifetime: int = 600, **changes: Any) -> str:
        client = self.issuer.clients.get("svc-rt") or self.issuer.add_client(
            "svc-rt", resources={API: ("scores:read",)}
        )
        client.lifetime = lifetime
        claims = {**self.issuer.client_claims(client, API, ("scores:read",)), **changes}
        return self.issuer.mint(claims)


@pytest.fixture
async def rig(aiohttp_server: Any) -> AsyncIterator[Rig]:
    issuer = IssuerEmulator()
    issuer_server = await aiohttp_server(issuer.app)
    issuer.issuer = str(issuer_server.make_url("")).rstrip("/")
    upstream = SioUpstream()
    up = await aiohttp_server(upstream.app())
    raw = config_dict(
        str(up.make_url("")).rstrip("/"),
        upstream={"read_timeout": 30},
        issuers=[{"name": "authgear", "preset": "authgear", "issuer": issuer.issuer, "audiences": [API]}],
    )
    proxy = await aiohttp_server(create_app(build_config(raw, file="rt.yaml")))
    yield Rig(issuer, upstream, proxy)


@pytest.fixture
async def sio() -> AsyncIterator[socketio.AsyncClient]:
    client = socketio.AsyncClient(reconnection=False)
    yield client
    await client.disconnect()


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_the_principal_reaches_connect_with_its_issuer(
    rig: Rig, sio: socketio.AsyncClient, transports: list[str]
) -> None:
    token = rig.token()
    await sio.connect(rig.url, auth={"token": token}, transports=transports, wait_timeout=5)
    who = await sio.call("whoami", timeout=5)
    assert {k: who[k] for k in ("type", "id", "token_type", "scopes", "issuer")} == {
        "type": "machine",
        "id": "svc-rt",
        "token_type": "m2m_token",
        "scopes": ["scores:read"],
        "issuer": "authgear",
    }
    assert await sio.call("join", "private", timeout=5) == "joined"
    assert token not in str(rig.upstream.connects)


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_a_bad_issuer_token_is_anonymous_on_socketio_and_401_on_rest(
    rig: Rig, sio: socketio.AsyncClient, transports: list[str]
) -> None:
    bad = rig.token(aud="https://another-api.example")
    await sio.connect(rig.url, auth={"token": bad}, transports=transports, wait_timeout=5)
    assert await sio.call("whoami", timeout=5) == {"type": "anonymous", "refusal": "token_invalid"}
    assert await sio.call("join", "private", timeout=5) == "refused"
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{rig.url}/api/v1/matches", headers={"Authorization": f"Bearer {bad}"}
        ) as resp:
            assert resp.status == 401
            assert "another API" in (await resp.json())["error"]["message"]


async def test_polling_carries_the_principal_and_falls_back_to_anonymous(
    rig: Rig, sio: socketio.AsyncClient
) -> None:
    """Long-polling alone: the CONNECT in a polling POST gets the issuer's principal, and a
    token for another API gets the anonymous fallback, in one test (one teardown)."""
    await sio.connect(rig.url, auth={"token": rig.token()}, transports=["polling"], wait_timeout=5)
    who = await sio.call("whoami", timeout=5)
    assert (who["type"], who["id"], who["issuer"]) == ("machine", "svc-rt", "authgear")
    assert await sio.call("join", "private", timeout=5) == "joined"
    stranger = socketio.AsyncClient(reconnection=False)
    bad = rig.token(aud="https://another-api.example")
    await stranger.connect(rig.url, auth={"token": bad}, transports=["polling"], wait_timeout=5)
    try:
        assert await stranger.call("whoami", timeout=5) == {"type": "anonymous", "refusal": "token_invalid"}
        assert await stranger.call("join", "private", timeout=5) == "refused"
    finally:
        await stranger.disconnect()
    assert bad not in str(rig.upstream.connects)


async def test_bearer_on_the_websocket_upgrade(rig: Rig, sio: socketio.AsyncClient) -> None:
    token = rig.token()
    await sio.connect(
        rig.url, headers={"Authorization": f"Bearer {token}"}, transports=["websocket"],
        wait_timeout=5,
    )
    assert (await sio.call("whoami", timeout=5))["issuer"] == "authgear"


@pytest.mark.parametrize("transports", [["websocket"]])
async def test_the_namespace_is_disconnected_when_the_token_expires(
    rig: Rig, sio: socketio.AsyncClient, transports: list[str]
) -> None:
    token = rig.token(exp=int(time.time()) + 2)
    gone = asyncio.Event()
    sio.on("disconnect", lambda *args: gone.set())
    await sio.connect(rig.url, auth={"token": token}, transports=transports, wait_timeout=5)
    assert (await sio.call("whoami", timeout=5))["issuer"] == "authgear"
    await asyncio.wait_for(gone.wait(), 10)
    assert "/" in rig.upstream.disconnects
