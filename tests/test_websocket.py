"""The WebSocket relay through real sockets: an aiohttp client, `relay()` mounted in a
minimal app, and an upstream that records every frame and close it sees."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from proxy.config import model as config
from proxy.observe.metrics import Metrics
from tests.support_socketio import (
    PARTNER,
    RawUpstream,
    TokenBook,
    auth_of,
    proxy_app,
    real_app_available,
    registry_of,
)

Factory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> tuple[RawUpstream, TestServer]:
    raw = RawUpstream()
    return raw, await aiohttp_server(raw.app())


@pytest.fixture(params=["app", "harness"])
def kind(request: pytest.FixtureRequest) -> str:
    """Through the real request path (`create_app`) and through `relay()` mounted alone."""
    if request.param == "app" and (why := real_app_available()):
        pytest.skip(why)
    return str(request.param)


@pytest.fixture
def proxy(
    aiohttp_client: Factory, upstream: tuple[RawUpstream, TestServer], kind: str
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def make(book: TokenBook | None = None, **kwargs: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(
            proxy_app(kind, upstream[1].make_url("/"), book or TokenBook(), **kwargs)
        )

    return make


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_echo_text_and_binary(proxy: Any, upstream: tuple[RawUpstream, TestServer]) -> None:
    metrics = Metrics()
    client = await proxy(metrics=metrics)
    async with client.ws_connect("/optional/ws") as ws:
        await ws.send_str("hello")
        assert await ws.receive_str() == "hello"
        await ws.send_bytes(b"\x00\x01\xff")
        assert await ws.receive_bytes() == b"\x00\x01\xff"
        assert metrics.websocket_connections._value.get() == 1
    assert upstream[0].frames == [("text", "hello"), ("binary", b"\x00\x01\xff")]
    await until(lambda: metrics.websocket_connections._value.get() == 0)
    up = metrics.websocket_messages.labels("client_to_upstream")._value.get()
    down = metrics.websocket_messages.labels("upstream_to_client")._value.get()
    assert (up, down) == (2, 2)


async def test_client_handshake_headers_do_not_reach_upstream(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    client = await proxy()
    async with client.ws_connect(
        "/optional/ws", headers={"Sec-WebSocket-Extensions": "x-bogus"}
    ) as ws:
        await ws.send_str("hi")
        await ws.receive_str()
    seen = upstream[0].headers[-1]
    assert "x-bogus" not in seen.get("Sec-WebSocket-Extensions", "")


@pytest.mark.parametrize(
    ("offered", "chosen"), [(("a", "b"), "b"), (("c", "b"), "c"), (("x",), None), ((), None)]
)
async def test_subprotocol_is_the_upstreams_choice(
    proxy: Any, offered: tuple[str, ...], chosen: str | None
) -> None:
    client = await proxy()
    async with client.ws_connect("/optional/ws", protocols=offered) as ws:
        assert ws.protocol == chosen


async def test_client_close_code_and_reason_reach_upstream(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    client = await proxy()
    ws = await client.ws_connect("/optional/ws")
    await ws.send_str("x")
    await ws.receive_str()
    await ws.close(code=4000, message=b"bye")
    await until(lambda: bool(upstream[0].closes))
    assert upstream[0].closes[-1][0] == 4000


async def test_upstream_close_code_and_reason_reach_client(proxy: Any) -> None:
    client = await proxy()
    async with client.ws_connect("/optional/ws", autoclose=False) as ws:
        await ws.send_str("close:4001:server says bye")
        msg = await ws.receive()
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4001, "server says bye")


async def test_ping_and_pong_payloads_are_relayed(proxy: Any) -> None:
    client = await proxy()
    async with client.ws_connect("/optional/ws", autoping=False) as ws:
        await ws.ping(b"are-you-there")
        msg = await ws.receive()  # the upstream's autopong, relayed
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are-you-there")


async def test_oversize_client_message_closes_1009(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    client = await proxy(settings=config.WebSocket(max_message_size=1024))
    async with client.ws_connect("/optional/ws", autoclose=False) as ws:
        await ws.send_str("y" * 2000)
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
    await until(lambda: bool(upstream[0].closes))
    assert upstream[0].closes[-1][0] == 1009
    assert all(len(str(data)) < 1024 for _, data in upstream[0].frames)


async def test_oversize_upstream_message_closes_1009(proxy: Any) -> None:
    client = await proxy(settings=config.WebSocket(max_message_size=1024))
    async with client.ws_connect("/optional/ws", autoclose=False) as ws:
        await ws.send_str("big:5000")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://app.example", 101),
        ("https://APP.example/", 101),
        ("https://evil.example", 403),
        (None, 101),
    ],
)
async def test_origin_allow_list(proxy: Any, origin: str | None, status: int) -> None:
    client = await proxy(settings=config.WebSocket(allowed_origins=("https://app.example",)))
    headers = {"Origin": origin} if origin else {}
    if status == 101:
        async with client.ws_connect("/optional/ws", headers=headers) as ws:
            await ws.send_str("ok")
            assert await ws.receive_str() == "ok"
        return
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/optional/ws", headers=headers)
    assert info.value.status == 403


async def test_upstream_down_is_502_before_the_upgrade(
    aiohttp_client: Factory, unused_tcp_port: int, kind: str
) -> None:
    client = await aiohttp_client(
        proxy_app(kind, URL(f"http://127.0.0.1:{unused_tcp_port}/"), TokenBook())
    )
    resp = await client.get(
        "/optional/ws",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_unavailable"


async def test_invalid_upgrade_is_400(proxy: Any) -> None:
    client = await proxy()
    resp = await client.get(
        "/optional/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"}
    )
    assert resp.status == 400


async def test_token_expiry_closes_plain_websocket_1008(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    book = TokenBook({"soon": PARTNER.replace(expires_at=time.time() + 0.3)})
    metrics = Metrics()
    client = await proxy(book, metrics=metrics)
    async with client.ws_connect(
        "/optional/ws", headers={"Authorization": "Bearer soon"}, autoclose=False
    ) as ws:
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)
    await until(lambda: bool(upstream[0].closes))
    assert upstream[0].closes[-1][0] == 1008
    assert metrics.socketio_disconnects._value.get() == 1


async def test_revoked_opaque_token_closes_at_reverification(proxy: Any) -> None:
    book = TokenBook()
    client = await proxy(book, reverify_seconds=0.1)
    async with client.ws_connect(
        "/optional/ws", headers={"Authorization": "Bearer good"}, autoclose=False
    ) as ws:
        await ws.send_str("still here")
        assert await ws.receive_str() == "still here"
        book.revoked.add("good")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)


async def test_reverification_while_clerk_is_down_keeps_the_socket(proxy: Any) -> None:
    book = TokenBook()
    client = await proxy(book, reverify_seconds=0.05)
    async with client.ws_connect("/optional/ws", headers={"Authorization": "Bearer good"}) as ws:
        book.down = True
        await until(lambda: len(book.calls) >= 3)  # the handshake + two re-verifications
        await ws.send_str("alive")
        assert await ws.receive_str() == "alive"


async def test_shutdown_closes_open_sockets_1001(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    client = await proxy()
    async with client.ws_connect("/optional/ws", autoclose=False) as ws:
        await ws.send_str("x")
        await ws.receive_str()
        registry = registry_of(client.server.app)
        assert len(registry) == 1
        await registry.drain(0.05)
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    await until(lambda: len(registry) == 0)
    assert upstream[0].closes[-1][0] == 1001


# --- Socket.IO frames over the relay (raw Engine.IO, recorded by the upstream) ----------


async def test_connect_frames_are_rewritten(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    metrics = Metrics()
    client = await proxy(metrics=metrics)
    async with client.ws_connect("/socket.io/?EIO=4&transport=websocket") as ws:
        for frame in [
            '40{"token":"good","principal":{"type":"user","id":"user_admin"},"pid":"p"}',
            '40/admin,{"token":"wrong"}',
            '42["plain",{"token":"good"}]',
        ]:
            await ws.send_str(frame)
            await ws.receive_str()
    texts = [data for kind, data in upstream[0].frames if kind == "text"]
    assert auth_of(texts[0]) == {
        "pid": "p",
        "principal": {
            "type": "machine",
            "id": "mch_partner",
            "token_type": "m2m_token",
            "token_id": "mt_0123456789abcdef0123456789abcdef",
            "scopes": ["scores:read"],
            "claims": {"tier": "gold"},
        },
    }
    assert texts[1] == '40/admin,{"principal":{"type":"anonymous","refusal":"token_invalid"}}'
    assert texts[2] == '42["plain",{"token":"good"}]'  # not a CONNECT: untouched
    assert metrics.socketio_connects.labels("machine")._value.get() == 1
    assert metrics.socketio_connects.labels("anonymous")._value.get() == 1


async def test_binary_attachments_pass_in_order(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    client = await proxy()
    async with client.ws_connect("/socket.io/?EIO=4&transport=websocket") as ws:
        await ws.send_str(
            '452-["file",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
        )
        await ws.send_bytes(b"\x01first")
        await ws.send_bytes(b"\x02second")
        for _ in range(3):
            await ws.receive()
    assert [data for _, data in upstream[0].frames] == [
        '452-["file",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
        b"\x01first",
        b"\x02second",
    ]


async def test_binary_outside_attachments_is_refused(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    client = await proxy()
    async with client.ws_connect("/socket.io/?EIO=4&transport=websocket", autoclose=False) as ws:
        await ws.send_bytes(b"\x83\xa4type\x00")  # what a msgpack-parser CONNECT looks like
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1003)
    assert upstream[0].frames == []


async def test_garbage_connect_closes_1008(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    client = await proxy()
    async with client.ws_connect("/socket.io/?EIO=4&transport=websocket", autoclose=False) as ws:
        await ws.send_str('40{"token":"good"')
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)
    assert upstream[0].frames == []


@pytest.mark.parametrize("query", ["EIO=3&transport=websocket", "EIO=4&transport=websocket&j=1"])
async def test_unreadable_socketio_handshake_is_400(proxy: Any, query: str) -> None:
    client = await proxy()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"/socket.io/?{query}")
    assert info.value.status == 400


async def test_clerk_down_answers_connect_error(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    book = TokenBook(down=True)
    client = await proxy(book)
    async with client.ws_connect("/socket.io/?EIO=4&transport=websocket") as ws:
        await ws.send_str('40/admin,{"token":"good"}')
        reply = await ws.receive_str()
    assert reply.startswith("44/admin,")
    assert json.loads(reply[len("44/admin,") :]) == {
        "message": "Clerk is unavailable",
        "data": {"code": "verification_unavailable", "retry_after": 3},
    }
    assert upstream[0].frames == []  # never downgraded to anonymous


async def test_socketio_expiry_sends_disconnect_both_ways(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    book = TokenBook({"soon": PARTNER.replace(expires_at=time.time() + 0.3)})
    client = await proxy(book)
    async with client.ws_connect("/socket.io/?EIO=4&transport=websocket") as ws:
        await ws.send_str('40/admin,{"token":"soon"}')
        assert (await ws.receive_str()).startswith("40/admin,")  # the echo upstream's "ack"
        assert await ws.receive_str() == "41/admin,"
        await ws.send_str("2")
        # The echo upstream also bounces the 41 it got; the socket itself stays open.
        rest = [await ws.receive_str()]
        while rest[-1] != "2":
            rest.append(await ws.receive_str())
        assert set(rest) <= {"41/admin,", "2"}
    assert ("text", "41/admin,") in upstream[0].frames


async def test_two_different_tokens_on_one_socket_closes_1008(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    book = TokenBook({"good": PARTNER, "other": PARTNER})
    client = await proxy(book)
    url = "/socket.io/?EIO=4&transport=websocket"
    headers = {"Authorization": "Bearer good"}
    async with client.ws_connect(url, headers=headers, autoclose=False) as ws:
        await ws.send_str('40{"token":"other"}')
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)
        assert "other" not in msg.extra and "good" not in msg.extra
    assert upstream[0].frames == []


async def test_upgrade_carries_the_principal_headers_not_the_token(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    client = await proxy()
    headers = {"Authorization": "Bearer good", "X-Auth-Principal-Id": "user_forged"}
    async with client.ws_connect("/optional/ws", headers=headers) as ws:
        await ws.send_str("hi")
        await ws.receive_str()
    seen = upstream[0].headers[-1]
    assert seen["X-Auth-Principal-Type"] == "machine"
    assert seen.get("X-Auth-Principal-Id") in (None, "mch_partner")
    assert "Authorization" not in seen


async def test_required_route_refuses_the_upgrade_with_401(
    proxy: Any, upstream: tuple[RawUpstream, TestServer], kind: str
) -> None:
    if kind != "app":
        pytest.skip("route auth modes belong to the real request path")
    client = await proxy()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/private/ws")
    assert info.value.status == 401
    assert upstream[0].headers == []  # the upstream was never asked


# The framing relay (a client offering permessage-deflate, `websocket.compression` on)
# keeps its sockets' grants in the same `realtime.namespaces.Namespaces` as the byte
# relay: expiry, re-verification and the ambiguous-count refusal through it.


async def test_framing_relay_closes_a_plain_websocket_1008_at_expiry(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    book = TokenBook({"soon": PARTNER.replace(expires_at=time.time() + 0.3)})
    metrics = Metrics()
    client = await proxy(book, metrics=metrics)
    async with client.ws_connect(
        "/optional/ws", headers={"Authorization": "Bearer soon"}, autoclose=False, compress=15
    ) as ws:
        assert ws.compress  # deflate negotiated: the framing relay carries it
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)
    await until(lambda: bool(upstream[0].closes))
    assert upstream[0].closes[-1][0] == 1008
    assert metrics.socketio_disconnects._value.get() == 1


async def test_framing_relay_disconnects_an_expired_namespace_both_ways(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    book = TokenBook({"soon": PARTNER.replace(expires_at=time.time() + 0.3)})
    client = await proxy(book)
    async with client.ws_connect("/socket.io/?EIO=4&transport=websocket", compress=15) as ws:
        assert ws.compress
        await ws.send_str('40/admin,{"token":"soon"}')
        assert (await ws.receive_str()).startswith("40/admin,")
        assert await ws.receive_str() == "41/admin,"
    assert ("text", "41/admin,") in upstream[0].frames


async def test_framing_relay_closes_at_a_revoked_tokens_reverification(proxy: Any) -> None:
    book = TokenBook()
    client = await proxy(book, reverify_seconds=0.1)
    async with client.ws_connect(
        "/optional/ws", headers={"Authorization": "Bearer good"}, autoclose=False, compress=15
    ) as ws:
        assert ws.compress
        await ws.send_str("still here")
        assert await ws.receive_str() == "still here"
        book.revoked.add("good")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)


async def test_framing_relay_refuses_an_ambiguous_count_1008(
    proxy: Any, upstream: tuple[RawUpstream, TestServer]
) -> None:
    client = await proxy()
    url = "/socket.io/?EIO=4&transport=websocket"
    async with client.ws_connect(url, autoclose=False, compress=15) as ws:
        assert ws.compress
        await ws.send_str("41\u0663-/admin,")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)
    assert [f for f in upstream[0].frames if f[0] == "text"] == []
