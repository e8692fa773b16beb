"""Socket.IO end to end with real peers on both sides: python-socketio AsyncServer as the
upstream, python-socketio AsyncClient and the Node socket.io-client 4 as clients."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestServer

from proxy.core.errors import TOKEN_EXPIRED, ProxyError
from proxy.core.principal import Principal, Recent
from tests.support_socketio import (
    PARTNER,
    SioUpstream,
    TokenBook,
    proxy_app,
    real_app_available,
    registry_of,
)

NODE_DIR = Path(__file__).parent / "node"
PARTNER_AUTH = {
    "type": "machine",
    "id": "mch_partner",
    "token_type": "m2m_token",
    "token_id": "mt_0123456789abcdef0123456789abcdef",
    "scopes": ["scores:read"],
    "claims": {"tier": "gold"},
}
TRANSPORTS = [
    pytest.param(["polling", "websocket"], id="polling+upgrade"),
    pytest.param(["websocket"], id="websocket"),
]


class ExpiredBook(TokenBook):
    def cached(self, token: str, recent: Recent | None = None) -> Principal | None:
        return None

    async def verify(self, token: str, client_ip: str) -> Principal:
        if token == "expired":
            raise ProxyError(TOKEN_EXPIRED, "the token has expired")
        return await super().verify(token, client_ip)


@dataclasses.dataclass
class Rig:
    upstream: SioUpstream
    server: TestServer
    book: TokenBook

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture(params=["app", "harness"])
async def rig(
    aiohttp_server: Callable[..., Awaitable[TestServer]], request: pytest.FixtureRequest
) -> Rig:
    """The proxy under test: the real request path (`create_app`), and `relay()` plus the
    polling rewrite mounted alone (which pins the relay's own behaviour)."""
    if request.param == "app" and (why := real_app_available()):
        pytest.skip(why)
    upstream = SioUpstream()
    up = await aiohttp_server(upstream.app())
    book = ExpiredBook()
    proxy = await aiohttp_server(proxy_app(request.param, up.make_url("/"), book))
    return Rig(upstream, proxy, book)


@pytest.fixture
async def sio() -> AsyncIterator[socketio.AsyncClient]:
    client = socketio.AsyncClient(reconnection=False)
    yield client
    await client.disconnect()


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def no_token_upstream(rig: Rig) -> None:
    blob = json.dumps([rig.upstream.connects, rig.upstream.headers])
    assert "good" not in blob.replace("token_type", "")


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_valid_token_reaches_upstream_as_principal(
    rig: Rig, sio: socketio.AsyncClient, transports: list[str]
) -> None:
    await sio.connect(
        rig.url, auth={"token": "good", "pid": None}, transports=transports, wait_timeout=5
    )
    assert await sio.call("whoami", timeout=5) == PARTNER_AUTH
    assert await sio.call("join", "private", timeout=5) == "joined"
    assert rig.upstream.connects == [("/", {"pid": None, "principal": PARTNER_AUTH})]
    no_token_upstream(rig)


@pytest.mark.parametrize("transports", TRANSPORTS)
@pytest.mark.parametrize(
    ("auth", "refusal"),
    [
        pytest.param({"token": "not-a-token"}, "token_invalid", id="invalid"),
        pytest.param({"token": "expired"}, "token_expired", id="expired"),
        pytest.param(None, None, id="missing"),
        pytest.param({"principal": PARTNER_AUTH}, None, id="forged"),
        pytest.param({"token": "bad", "principal": PARTNER_AUTH}, "token_invalid", id="forged+invalid"),
    ],
)
async def test_no_valid_token_is_anonymous_and_refused_private_rooms(
    rig: Rig,
    sio: socketio.AsyncClient,
    transports: list[str],
    auth: dict[str, Any] | None,
    refusal: str | None,
) -> None:
    # The upstream (and, through it, the partner) learns why: the refusal the REST answer
    # would have had, beside "anonymous" (issue 28).
    anonymous = {"type": "anonymous"} if refusal is None else {"type": "anonymous", "refusal": refusal}
    errors: list[Any] = []
    sio.on("error", errors.append)
    await sio.connect(rig.url, auth=auth, transports=transports, wait_timeout=5)
    assert await sio.call("whoami", timeout=5) == anonymous
    assert await sio.call("join", "public", timeout=5) == "joined"
    assert await sio.call("join", "private", timeout=5) == "refused"
    await until(lambda: bool(errors))
    assert errors == [{"room": "private", "reason": "authentication required"}]
    assert rig.upstream.connects == [("/", {"principal": anonymous})]


async def test_bearer_on_the_handshake_without_auth_token(
    rig: Rig, sio: socketio.AsyncClient
) -> None:
    await sio.connect(
        rig.url, headers={"Authorization": "Bearer good"}, transports=["websocket"], wait_timeout=5
    )
    assert await sio.call("whoami", timeout=5) == PARTNER_AUTH
    no_token_upstream(rig)


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_a_refused_handshake_bearer_says_why_in_each_connect(
    rig: Rig,
    sio: socketio.AsyncClient,
    transports: list[str],
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    if request.node.callspec.params["rig"] == "harness":
        pytest.skip("the handshake's bearer is judged by the request path (create_app)")
    # A refused bearer on the handshake itself: the socket still connects (the documented
    # fallback), and each CONNECT the upstream gets says why.
    caplog.set_level(logging.INFO, logger="proxy.socketio")
    await sio.connect(
        rig.url, headers={"Authorization": "Bearer expired"}, transports=transports, wait_timeout=5
    )
    expired = {"type": "anonymous", "refusal": "token_expired"}
    assert await sio.call("whoami", timeout=5) == expired
    assert rig.upstream.connects == [("/", {"principal": expired})]
    await sio.disconnect()
    # A CONNECT carrying its own bad token: the proxy's log line says which refusal.
    other = socketio.AsyncClient(reconnection=False)
    await other.connect(rig.url, auth={"token": "not-a-token"}, transports=transports, wait_timeout=5)
    try:
        assert await other.call("whoami", timeout=5) == {"type": "anonymous", "refusal": "token_invalid"}
    finally:
        await other.disconnect()
    lines = [r for r in caplog.records if r.getMessage() == "socket.io connect fell back to anonymous"]
    assert [getattr(r, "code", None) for r in lines] == ["token_invalid"]
    assert "not-a-token" not in caplog.text


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_namespaces_acks_and_binary(
    rig: Rig, sio: socketio.AsyncClient, transports: list[str]
) -> None:
    await sio.connect(
        rig.url,
        auth={"token": "good"},
        namespaces=["/", "/live"],
        transports=transports,
        wait_timeout=5,
    )
    assert await sio.call("whoami", namespace="/live", timeout=5) == PARTNER_AUTH
    blob = bytes(range(256)) * 4
    assert await sio.call("echo", {"frame": blob, "n": 1}, namespace="/live", timeout=5) == {
        "frame": blob,
        "n": 1,
    }
    assert await sio.call("echo", blob, timeout=5) == blob
    assert sorted(ns for ns, _ in rig.upstream.connects) == ["/", "/live"]
    assert all(auth == {"principal": PARTNER_AUTH} for _, auth in rig.upstream.connects)


async def test_reconnection_after_the_proxy_drops_the_socket(rig: Rig) -> None:
    client = socketio.AsyncClient(
        reconnection=True, reconnection_delay=0.05, reconnection_delay_max=0.1
    )
    connected = asyncio.Event()
    client.on("connect", connected.set)
    try:
        await client.connect(
            rig.url, auth={"token": "good"}, transports=["websocket"], wait_timeout=5
        )
        connected.clear()
        await registry_of(rig.server.app).close_all()
        await asyncio.wait_for(connected.wait(), 10)
        assert await client.call("whoami", timeout=5) == PARTNER_AUTH
        assert [auth for _, auth in rig.upstream.connects] == [{"principal": PARTNER_AUTH}] * 2
    finally:
        await client.disconnect()


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_token_expiry_disconnects_the_namespace(
    rig: Rig, sio: socketio.AsyncClient, transports: list[str]
) -> None:
    rig.book.principals["soon"] = PARTNER.replace(expires_at=time.time() + 1.0)
    gone = asyncio.Event()
    sio.on("disconnect", lambda *args: gone.set())
    await sio.connect(rig.url, auth={"token": "soon"}, transports=transports, wait_timeout=5)
    assert (await sio.call("whoami", timeout=5))["id"] == "mch_partner"
    await asyncio.wait_for(gone.wait(), 10)
    await until(lambda: rig.upstream.disconnects == ["/"])


async def test_token_expiry_disconnects_a_polling_only_session(
    rig: Rig, sio: socketio.AsyncClient, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params["rig"] != "app":
        pytest.skip("polling expiry lives in the request path (create_app)")
    rig.book.principals["soon"] = PARTNER.replace(expires_at=time.time() + 1.0)
    gone = asyncio.Event()
    sio.on("disconnect", lambda *args: gone.set())
    await sio.connect(rig.url, auth={"token": "soon"}, transports=["polling"], wait_timeout=5)
    assert (await sio.call("whoami", timeout=5))["id"] == "mch_partner"
    # The next poll after the expiry carries the DISCONNECT (pingInterval bounds the wait).
    await asyncio.wait_for(gone.wait(), 40)
    await until(lambda: rig.upstream.disconnects == ["/"])


# --- the Node client --------------------------------------------------------------------

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "socket.io-client").is_dir(),
    reason="node or tests/node/node_modules missing (run `make test`, which runs npm ci)",
)


async def node_client(**opts: Any) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "sio_client.js"),
        json.dumps(opts),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=NODE_DIR,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


@needs_node
@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_node_client_with_valid_token(rig: Rig, transports: list[str]) -> None:
    seen = await node_client(
        url=rig.url,
        namespace="/live",
        token="good",
        transports=transports,
        rooms=["private"],
        binary=True,
        waitUpgrade=True,
    )
    assert seen["whoami"] == PARTNER_AUTH
    assert seen["joins"] == {"private": "joined"}
    assert seen["binary"] == [0, 1, 2, 255]
    assert seen["transport"] == "websocket"
    assert seen["errors"] == []
    no_token_upstream(rig)


@needs_node
@pytest.mark.parametrize(
    ("token", "refusal"),
    [("not-a-token", "token_invalid"), ("expired", "token_expired"), (None, None)],
)
async def test_node_client_without_valid_token_is_anonymous(
    rig: Rig, token: str | None, refusal: str | None
) -> None:
    seen = await node_client(
        url=rig.url, token=token, forged=PARTNER_AUTH, rooms=["public", "private"]
    )
    anonymous = {"type": "anonymous"} if refusal is None else {"type": "anonymous", "refusal": refusal}
    assert seen["whoami"] == anonymous
    assert seen["joins"] == {"public": "joined", "private": "refused"}
    assert seen["errors"] == [{"room": "private", "reason": "authentication required"}]
    assert rig.upstream.connects == [("/", {"principal": anonymous})]


@needs_node
async def test_node_client_sees_connect_error_when_clerk_is_down(rig: Rig) -> None:
    rig.book.down = True
    seen = await node_client(url=rig.url, namespace="/live", token="good", transports=["websocket"])
    assert seen["connect_error"] == "Clerk is unavailable"
    assert seen["data"] == {"code": "verification_unavailable", "retry_after": 3}
    assert rig.upstream.connects == []


@needs_node
@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_node_client_is_disconnected_when_its_token_expires(
    rig: Rig, transports: list[str]
) -> None:
    # Over polling+upgrade the CONNECT travels in a polling POST: the WebSocket the
    # session upgrades to inherits its grant and still enforces the expiry.
    rig.book.principals["soon"] = PARTNER.replace(expires_at=time.time() + 2.0)
    seen = await node_client(
        url=rig.url,
        namespace="/live",
        token="soon",
        transports=transports,
        waitUpgrade=True,
        waitDisconnect=True,
    )
    assert seen["whoami"]["id"] == "mch_partner"
    assert seen["transport"] == "websocket"
    assert seen["disconnect"] == "io server disconnect"
    await until(lambda: rig.upstream.disconnects == ["/live"])


# --- raw Engine.IO polling through the proxy (what the clients do, byte by byte) -------


async def handshake(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(f"{url}/socket.io/?EIO=4&transport=polling") as resp:
        body = await resp.text()
    assert resp.status == 200 and body.startswith("0"), body
    return str(json.loads(body[1:])["sid"])


async def test_polling_post_with_several_packets(rig: Rig) -> None:
    async with aiohttp.ClientSession() as session:
        sid = await handshake(session, rig.url)
        body = (
            '40{"token":"good","pid":"p1"}\x1e40/live,{"token":"bad","principal":{"type":"user"}}'
        )
        url = f"{rig.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
        async with session.post(url, data=body.encode()) as resp:
            assert (resp.status, (await resp.text()).lower()) == (200, "ok")
    await until(lambda: len(rig.upstream.connects) == 2)
    assert sorted(rig.upstream.connects, key=lambda c: c[0]) == [
        ("/", {"pid": "p1", "principal": PARTNER_AUTH}),
        ("/live", {"principal": {"type": "anonymous", "refusal": "token_invalid"}}),
    ]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ('40{"token":"good"', 400, "bad_request"),
        ("40[1,2]", 400, "bad_request"),
        ('40{"token":"good"}', 503, "verification_unavailable"),
    ],
)
async def test_polling_post_refusals(rig: Rig, body: str, status: int, code: str) -> None:
    rig.book.down = status == 503
    async with aiohttp.ClientSession() as session:
        sid = await handshake(session, rig.url)
        url = f"{rig.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
        async with session.post(url, data=body.encode()) as resp:
            assert resp.status == status
            assert (await resp.json())["error"]["code"] == code
            if status == 503:
                assert resp.headers["Retry-After"] == "3"
    assert rig.upstream.connects == []


@pytest.mark.parametrize(
    "query", ["EIO=3&transport=polling", "EIO=4&transport=polling&j=0", "EIO=4&transport=flash"]
)
async def test_unreadable_handshakes_are_400(rig: Rig, query: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{rig.url}/socket.io/?{query}") as resp:
            assert resp.status == 400
