"""The fast path's own behaviour, through real sockets: keep-alive and pipelining on
both legs, the hand-off to aiohttp mid-connection, response framings an upstream may
choose, the stale-connection retry, interim responses and the pool limit."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from aiohttp import web

from proxy.fastpath import frontdoor, listener
from proxy.request.app import PROXY, create_app
from tests.support import (
    ADMIN,
    MACHINE,
    FastPathServer,
    Recorder,
    StubVerifier,
    make_config,
    upstream_app,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class _Collect:
    done: list[Response] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    parser: Any = None

    def on_message_begin(self) -> None:
        self.headers, self.body = [], bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode(), value.decode()))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append(Response(self.parser.get_status_code(), self.headers, bytes(self.body)))


class RawClient:
    """A client that writes exact bytes and parses what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._collect = _Collect()
        self._collect.parser = httptools.HttpResponseParser(self._collect)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def responses(self, n: int) -> list[Response]:
        while len(self._collect.done) < n:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                break
            self._collect.parser.feed_data(data)
        out, self._collect.done = self._collect.done[:n], self._collect.done[n:]
        return out

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 10) == b""


def header(resp: Response, name: str) -> str | None:
    return next((v for k, v in resp.headers if k.lower() == name.lower()), None)


@pytest.fixture
async def servers() -> AsyncIterator[list[Any]]:
    started: list[Any] = []
    yield started
    for server in reversed(started):
        await (server.cleanup() if isinstance(server, web.AppRunner) else server.close())


async def fast_proxy(servers: list[Any], upstream_url: str, **overrides: Any) -> FastPathServer:
    app = create_app(make_config(upstream_url, **overrides), verifier=StubVerifier())
    proxy = FastPathServer(app)
    await proxy.start_server()
    servers.append(proxy)
    return proxy


async def recording_upstream(servers: list[Any]) -> tuple[str, Recorder, list[int]]:
    """The shared recording upstream, plus the client ports of connections it saw."""
    recorder = Recorder()
    app = upstream_app(recorder)
    ports: list[int] = []

    @web.middleware
    async def note_port(request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            ports.append(peer[1])
        return await handler(request)

    app.middlewares.append(note_port)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    servers.append(runner)
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}", recorder, ports


class _Closer:
    def __init__(self, server: asyncio.Server) -> None:
        self.server = server

    async def close(self) -> None:
        self.server.close()


async def raw_upstream(servers: list[Any], handler: Handler) -> str:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    servers.append(_Closer(server))
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def connect(proxy: FastPathServer) -> RawClient:
    assert proxy.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    return RawClient(reader, writer)


def get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: proxy.test", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def test_keep_alive_on_both_legs(servers: list[Any]) -> None:
    url, recorder, ports = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    client = await connect(proxy)
    for i in range(5):
        await client.send(get(f"/public/{i}"))
        (resp,) = await client.responses(1)
        assert resp.status == 200
    assert [s.raw_path for s in recorder.seen] == [f"/public/{i}" for i in range(5)]
    # One client connection, one upstream connection, reused.
    assert len(set(ports)) == 1


async def test_a_connection_changing_its_token_is_judged_by_each_request(
    servers: list[Any],
) -> None:
    """The connection remembers its last Authorization header and token: a new header,
    a bad one, or none at all must each be judged afresh."""
    url, recorder, _ = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    client = await connect(proxy)
    sequence = [
        ("Authorization: Bearer good-machine", 200, MACHINE.id),
        ("Authorization: Bearer good-machine", 200, MACHINE.id),
        ("Authorization: Bearer good-admin", 200, ADMIN.id),
        ("Authorization: Bearer bad-token", 401, None),
        ("Authorization: Basic Z29vZC1tYWNoaW5l", 401, None),
        ("X-Other: 1", 401, None),
        ("Authorization: Bearer good-machine", 200, MACHINE.id),
    ]
    for line, status, principal_id in sequence:
        await client.send(get("/api/x", line))
        (resp,) = await client.responses(1)
        assert resp.status == status, line
        if principal_id is not None:
            assert (
                header(Response(0, recorder.seen[-1].headers, b""), "X-Auth-Principal-Id")
                == principal_id
            ), line


async def test_a_repeated_request_goes_up_as_its_principal_and_config_say_now(
    servers: list[Any],
) -> None:
    """The same bytes on one connection reuse the parsed head and the rewritten head
    that went up: until the principal or the config behind them changes."""
    url, recorder, _ = await recording_upstream(servers)
    verifier = StubVerifier(principals={"good-machine": MACHINE})
    app = create_app(make_config(url), verifier=verifier)
    proxy = FastPathServer(app)
    await proxy.start_server()
    servers.append(proxy)
    client = await connect(proxy)
    request = get(
        "/api/x",
        "Authorization: Bearer good-machine",
        "X-Auth-Principal-Id: forged",
        "X-Partner-Principal-Id: forged",
    )

    async def send() -> Response:
        await client.send(request)
        (resp,) = await client.responses(1)
        assert resp.status == 200
        return Response(0, recorder.seen[-1].headers, b"")

    first, second = await send(), await send()
    # Each request has an id of its own (made here: the client sent none); the rest of
    # the head is the same bytes again.
    ids = header(first, "X-Request-Id"), header(second, "X-Request-Id")
    assert ids[0] != ids[1] and all(re.fullmatch("[0-9a-f]{32}", i or "") for i in ids)
    without_id = [[h for h in r.headers if h[0] != "X-Request-Id"] for r in (first, second)]
    assert without_id[0] == without_id[1]
    assert header(second, "X-Auth-Principal-Id") == MACHINE.id  # the forged one is gone
    assert header(second, "X-Partner-Principal-Id") == "forged"  # not ours (yet)
    verifier.principals = {"good-machine": ADMIN}  # the token now verifies as another
    assert header(await send(), "X-Auth-Principal-Id") == ADMIN.id
    await app[PROXY].reload(make_config(url, headers={"prefix": "X-Partner-"}))
    renamed = await send()
    assert header(renamed, "X-Partner-Principal-Id") == ADMIN.id  # ours now: replaced
    assert header(renamed, "X-Auth-Principal-Id") == "forged"  # no longer ours
    assert header(renamed, "X-Partner-Principal-Id") == header(
        await send(), "X-Partner-Principal-Id"
    )


async def test_pipelined_requests_are_answered_in_order(servers: list[Any]) -> None:
    url, recorder, _ = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    client = await connect(proxy)
    await client.send(get("/public/a") + get("/nope/b") + get("/public/c", "Connection: close"))
    first, second, third = await client.responses(3)
    assert (first.status, second.status, third.status) == (200, 401, 200)
    assert header(second, "WWW-Authenticate") == "Bearer"
    assert header(third, "Connection") == "close"
    assert await client.closed()
    assert [s.raw_path for s in recorder.seen] == ["/public/a", "/public/c"]


async def test_hand_off_to_aiohttp_mid_connection(servers: list[Any]) -> None:
    url, recorder, _ = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    client = await connect(proxy)
    body = b'{"a":1}'
    post = b"POST /public/echo HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 7\r\n\r\n" + body
    # A fast request, then one with a body pipelined behind it, then a plain one again.
    await client.send(get("/public/1") + post + get("/public/2"))
    first, second, third = await client.responses(3)
    assert [first.status, second.status, third.status] == [200, 200, 200]
    assert [s.method for s in recorder.seen] == ["GET", "POST", "GET"]
    assert recorder.seen[1].body_len == len(body)
    # Every leg carried the injected principal headers, never the client's.
    for seen in recorder.seen:
        assert ("X-Auth-Principal-Type", "anonymous") in seen.headers


async def test_socketio_paths_go_to_aiohttp_under_any_spelling(servers: list[Any]) -> None:
    url, recorder, _ = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    client = await connect(proxy)
    await client.send(get("/public/../socket.io/?EIO=4&transport=polling"))
    (resp,) = await client.responses(1)
    assert resp.status == 200
    # aiohttp's side took it (its Socket.IO handling checks the query), and from then
    # on it owns the connection.
    assert not any(isinstance(c, frontdoor.FrontDoor) for c in _front(proxy).connections)
    assert recorder.last.raw_path == "/socket.io/?EIO=4&transport=polling"


def _front(proxy: FastPathServer) -> listener.FrontDoorServer:
    assert proxy.front is not None
    return proxy.front


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def one_connection_upstream(servers: list[Any], answers: list[list[bytes]]) -> str:
    """An upstream answering request i of one keep-alive connection with the writes
    `answers[i]`, pausing between them so that each arrives in a read of its own."""

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for writes in answers:
            await _read_head(reader)
            for n, piece in enumerate(writes):
                if n:
                    await asyncio.sleep(0.05)
                writer.write(piece)
                await writer.drain()
        await reader.read()

    return await raw_upstream(servers, upstream)


async def in_turn(proxy: FastPathServer, n: int) -> list[Response]:
    """n requests on one client connection, each sent once the one before is answered."""
    client = await connect(proxy)
    got = []
    for i in range(n):
        await client.send(get(f"/public/{i}"))
        got += await client.responses(1)
    return got


async def test_close_delimited_answer_is_rechunked(servers: list[Any]) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        for piece in (b"first ", b"second ", b"third"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    proxy = await fast_proxy(servers, await raw_upstream(servers, upstream))
    client = await connect(proxy)
    await client.send(get("/public/x"))
    (resp,) = await client.responses(1)
    assert resp.status == 200
    assert resp.body == b"first second third"
    assert header(resp, "Transfer-Encoding") == "chunked"
    # The upstream's Connection: close is hop-by-hop; the client's connection stays up.
    assert header(resp, "Connection") is None
    await client.send(get("/public/y"))
    (again,) = await client.responses(1)
    assert again.body == b"first second third"


async def test_a_repeated_answer_head_is_framed_as_the_answer_it_heads(
    servers: list[Any],
) -> None:
    """An upstream connection remembers the framing of the last answer head it read: the
    same bytes again reuse it, anything else (here a chunked answer between two equal
    ones) is read afresh."""
    fixed = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kind: fixed\r\n\r\nhello"
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    answers = [[fixed], [fixed], [chunked], [fixed]]
    proxy = await fast_proxy(servers, await one_connection_upstream(servers, answers))
    got = [(r.status, header(r, "X-Kind"), r.body) for r in await in_turn(proxy, len(answers))]
    assert got == [
        (200, "fixed", b"hello"),
        (200, "fixed", b"hello"),
        (200, "chunked", b"abc"),
        (200, "fixed", b"hello"),
    ]


async def test_interim_responses_are_dropped(servers: list[Any]) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    proxy = await fast_proxy(servers, await raw_upstream(servers, upstream))
    client = await connect(proxy)
    await client.send(get("/public/x"))
    (resp,) = await client.responses(1)
    assert (resp.status, resp.body) == (200, b"ok")


async def test_a_kept_alive_connection_the_upstream_dropped_is_retried_once(
    servers: list[Any],
) -> None:
    answered: list[int] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the first request of each connection, then closes on the second
        # without a byte, as an upstream whose keep-alive timer fired does.
        await _read_head(reader)
        answered.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await _read_head(reader)
        writer.transport.abort()

    proxy = await fast_proxy(servers, await raw_upstream(servers, upstream))
    client = await connect(proxy)
    for _ in range(3):
        await client.send(get("/public/x"))
        (resp,) = await client.responses(1)
        assert (resp.status, resp.body) == (200, b"ok")
    assert len(answered) == 3


async def test_no_retry_for_a_request_that_is_not_idempotent(servers: list[Any]) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await _read_head(reader)
        writer.transport.abort()

    proxy = await fast_proxy(servers, await raw_upstream(servers, upstream))
    client = await connect(proxy)
    await client.send(get("/public/x"))
    assert (await client.responses(1))[0].status == 200
    # A body-less POST is aiohttp's (it goes up with `Content-Length: 0`, as aiohttp's
    # door sends it): on a connection of aiohttp's pool, never on the fast path's one
    # that this upstream would reset, and never retried there either.
    await client.send(b"POST /public/x HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
    (resp,) = await client.responses(1)
    assert (resp.status, resp.body) == (200, b"ok")


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        # A head that does not end within upstream.MAX_RESPONSE_HEAD is not buffered on.
        b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 70_000,
    ],
    ids=["not-http", "two-lengths", "unasked-upgrade", "endless-head"],
)
async def test_a_malformed_upstream_answer_is_502(servers: list[Any], answer: bytes) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(1)

    proxy = await fast_proxy(servers, await raw_upstream(servers, upstream))
    client = await connect(proxy)
    await client.send(get("/public/x"))
    (resp,) = await client.responses(1)
    assert resp.status == 502
    assert b"upstream_unavailable" in resp.body


async def test_pool_limit_queues_instead_of_failing(servers: list[Any]) -> None:
    url, recorder, ports = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url, upstream={"pool_size": 1})
    clients = [await connect(proxy) for _ in range(4)]
    for i, client in enumerate(clients):
        await client.send(get(f"/public/slow?delay=0.2&i={i}"))
    answers = await asyncio.gather(*(c.responses(1) for c in clients))
    assert [a[0].status for a in answers] == [200] * 4
    assert len(recorder.seen) == 4
    assert len(set(ports)) == 1
    assert proxy.app[PROXY].fast_pool.size == 1


async def test_idle_client_connections_are_closed_after_keepalive(servers: list[Any]) -> None:
    url, _, _ = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    client = await connect(proxy)
    await client.send(get("/public/x"))
    await client.responses(1)
    (conn,) = _front(proxy).connections
    idle = proxy.app[PROXY].runtime.config.connections.idle_timeout
    _front(proxy).doorway.sweep(conn.clock.since + idle / 2)
    assert conn.transport is not None
    _front(proxy).doorway.sweep(conn.clock.since + idle + 1)
    assert await client.closed()


async def test_drain_closes_idle_connections_and_finishes_busy_ones(servers: list[Any]) -> None:
    url, _, _ = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    idle, busy = await connect(proxy), await connect(proxy)
    await idle.send(get("/public/x"))
    await idle.responses(1)
    await busy.send(get("/public/slow?delay=0.5"))
    await asyncio.sleep(0.1)
    drain = asyncio.ensure_future(_front(proxy).drain(time.monotonic() + 5))
    assert await idle.closed()
    (resp,) = await busy.responses(1)
    assert resp.status == 200
    assert header(resp, "Connection") == "close"
    assert await busy.closed()
    await drain


FIVE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-K: v\r\n\r\n"
SIX = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"
TWO = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
NO_BODY = b"HTTP/1.1 204 No Content\r\nX-K: v\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("answers", "bodies"),
    [
        # Same head, same length, other bytes: the body is whatever arrived.
        ([[FIVE + b"hello"], [FIVE + b"world"], [FIVE + b"world"]], [b"hello", b"world", b"world"]),
        # Bodiless answers repeat as heads alone.
        ([[NO_BODY]] * 3, [b""] * 3),
        # The body in two reads.
        ([[SIX + b"abc", b"def"]] * 3, [b"abcdef"] * 3),
        ([[CHUNKED]] * 3, [b"abc"] * 3),
        # After an interim answer, the final one whole in its own read.
        ([[TWO + b"ok"], [b"HTTP/1.1 103 Early Hints\r\n\r\n", TWO + b"ok"]], [b"ok", b"ok"]),
    ],
    ids=["same-head-other-body", "no-body", "body-in-two-reads", "chunked", "after-interim"],
)
async def test_repeated_answers_on_one_upstream_connection_are_framed_each_time(
    servers: list[Any], answers: list[list[bytes]], bodies: list[bytes]
) -> None:
    """Answers under the same head bytes, whole in one read or in pieces, chunked or
    after an interim answer: each is framed by its own head and length (a per-connection
    memo once relayed repeats unparsed; removed, as it paid only on identical answers)."""
    proxy = await fast_proxy(servers, await one_connection_upstream(servers, answers))
    assert [r.body for r in await in_turn(proxy, len(answers))] == bodies
    assert proxy.app[PROXY].fast_pool.size == 1  # one upstream connection throughout


CLOSING = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@pytest.mark.parametrize(
    ("answers", "connections"),
    [
        # The keep-alive verdict is the head's: a repeated `Connection: close` answer
        # ends its upstream connection like the first one did.
        ([CLOSING] * 3, 3),
        # One byte past the stated length: not a whole answer, so llhttp reads it, and
        # the stray byte ends that upstream connection instead of heading the next answer.
        ([TWO + b"ok", TWO + b"okX", TWO + b"ok"], 2),
    ],
    ids=["connection-close", "stray-byte"],
)
async def test_a_repeated_answer_ends_its_connection_as_the_first_did(
    servers: list[Any], answers: list[bytes], connections: int
) -> None:
    opened: list[int] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(1)
        with contextlib.suppress(asyncio.IncompleteReadError):
            while answers and await _read_head(reader):
                writer.write(answers.pop(0))
                await writer.drain()
        await reader.read()

    proxy = await fast_proxy(servers, await raw_upstream(servers, upstream))
    got = [(r.status, r.body) for r in await in_turn(proxy, 3)]
    assert got == [(200, b"ok")] * 3
    assert len(opened) == connections
