"""The byte relay (`proxy.realtime.splice`) where the aiohttp-client tests cannot reach:
a raw client that writes its frames one byte at a time (every head and every CONNECT cut
everywhere), several frames in one write, and the pure frame helpers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.realtime import handshake, socketio, splice
from proxy.realtime.relays import Rechecks
from tests.support_socketio import RawUpstream, TokenBook, auth_of, relay_app


def test_accept_key_is_rfc_6455s_example() -> None:
    assert handshake.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_a_masked_frame_unmasks_to_its_payload(size: int) -> None:
    payload = os.urandom(size)
    data = splice.frame(splice.TEXT, payload, masked=True)
    head = 2 + (0 if size < 126 else 2 if size < 65536 else 8)
    assert data[0] == 0x81 and data[1] & 0x80
    key = data[head : head + 4]
    assert splice.unmask(key, data[head + 4 :]) == payload


def test_the_upstreams_answer_is_checked() -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    good = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: b"
    )
    assert handshake.read_answer(good, key, ("a", "b")) == handshake.UpstreamAnswer(101, True, "b")
    assert not handshake.read_answer(good, key, ("a",)).accepted  # a protocol never offered
    deflated = good + b"\r\nSec-WebSocket-Extensions: permessage-deflate"
    assert not handshake.read_answer(deflated, key, ("b",)).accepted
    assert handshake.read_answer(b"HTTP/1.1 403 Forbidden", key, ()).status == 403


def masked(text: str) -> bytes:
    return splice.frame(splice.TEXT, text.encode(), masked=True)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    size = b1 & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(size)


@pytest.fixture
async def raw_socket(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> tuple[RawUpstream, Callable[[], Awaitable[Any]]]:
    raw = RawUpstream()
    upstream = await aiohttp_server(raw.app())
    proxy = await aiohttp_server(relay_app(upstream.make_url("/"), TokenBook()))

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {proxy.host}:{proxy.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert handshake.accept_key(key).encode() in head
        return reader, writer

    return raw, connect


async def test_frames_cut_at_every_byte_are_relayed_and_rewritten(
    raw_socket: tuple[RawUpstream, Callable[[], Awaitable[Any]]],
) -> None:
    raw, connect = raw_socket
    reader, writer = await connect()
    packets = ['40{"token":"good","pid":"p"}', '42["x",' + json.dumps("y" * 300) + "]", "2"]
    for packet in packets:
        for byte in masked(packet):
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(0)
    echoes = [await read_frame(reader) for _ in packets]
    texts = [text for kind, text in raw.frames if kind == "text"]
    assert auth_of(texts[0])["pid"] == "p"
    assert auth_of(texts[0])["principal"]["id"] == "mch_partner"
    assert texts[1:] == packets[1:]
    assert [payload.decode() for _, payload in echoes][1:] == packets[1:]
    writer.close()


async def test_many_frames_in_one_write_keep_their_order_around_a_connect(
    raw_socket: tuple[RawUpstream, Callable[[], Awaitable[Any]]],
) -> None:
    raw, connect = raw_socket
    reader, writer = await connect()
    packets = ["42[1]", '40/admin,{"token":"good"}', "42[2]", "42[3]"]
    writer.write(b"".join(masked(p) for p in packets))
    for _ in packets:
        await read_frame(reader)
    texts = [text for kind, text in raw.frames if kind == "text"]
    assert texts[0] == "42[1]" and texts[2:] == ["42[2]", "42[3]"]
    assert texts[1].startswith("40/admin,") and "good" not in texts[1]
    writer.close()


async def test_an_unmasked_client_frame_closes_1002(
    raw_socket: tuple[RawUpstream, Callable[[], Awaitable[Any]]],
) -> None:
    raw, connect = raw_socket
    reader, writer = await connect()
    writer.write(splice.frame(splice.TEXT, b"42[1]", masked=False))
    opcode, payload = await read_frame(reader)
    assert (opcode, int.from_bytes(payload[:2], "big")) == (splice.CLOSE, 1002)
    assert raw.frames == []
    writer.close()


@pytest.mark.parametrize(
    "packet", ["41\u0663-/admin,", '45\u0663-/admin,["x"]', "4312345678901" + "[1]"]
)
async def test_a_count_python_socketio_would_read_otherwise_closes_1008(
    raw_socket: tuple[RawUpstream, Callable[[], Awaitable[Any]]], packet: str
) -> None:
    """`41٣-/admin,` is python-socketio's DISCONNECT of /admin and socket.io-parser's of
    /: the proxy cannot know which its upstream reads, so it refuses the packet."""
    raw, connect = raw_socket
    reader, writer = await connect()
    writer.write(masked(packet))
    opcode, payload = await read_frame(reader)
    assert (opcode, int.from_bytes(payload[:2], "big")) == (splice.CLOSE, 1008)
    assert payload[2:].decode() == socketio.AMBIGUOUS_PREFIX
    assert [text for kind, text in raw.frames if kind == "text"] == []
    writer.close()


async def test_one_timer_calls_each_socket_once_never_early_and_not_once_removed() -> None:
    loop = asyncio.get_running_loop()
    calls: list[tuple[str, float]] = []
    done = loop.create_future()

    class Socket:
        def __init__(self, name: str, delay: float) -> None:
            self.name, self.at = name, loop.time() + delay

        def due(self) -> None:
            calls.append((self.name, loop.time() - self.at))
            if self.name == "last" and not done.done():
                done.set_result(None)

    rechecks = Rechecks()
    late, early, gone, last = (
        Socket("late", 0.3),
        Socket("early", 0.0),
        Socket("gone", 0.1),
        Socket("last", 0.6),
    )
    for each, delay in ((late, 0.3), (early, 0.0), (gone, 0.1), (last, 0.6)):
        slot = rechecks.add(each, delay)
        if each is gone:
            rechecks.remove(gone, slot)
    await asyncio.wait_for(done, 10)
    assert [name for name, _ in calls] == ["early", "late", "last"]
    assert all(after >= 0 for _, after in calls)
