"""Raw sockets on both sides of the proxy: a scripted upstream that records every byte it
receives and answers each request as its path says (including the misbehaviours a real
upstream may have), and a client that writes exact bytes and keeps what came back.

The upstream's answer is chosen by the last segment of the request's path
(`/public/<anything>/<behaviour>`), so one upstream serves every case of a run:

| behaviour | what the upstream does |
|---|---|
| ok (default) | `200` with `Content-Length` and a body naming the request (`ok <target>`) |
| chunked | the same body, chunked |
| close | the body without a length, then closes |
| extra | a whole answer and an unsolicited second one in the same write |
| extra-later | a whole answer, then a second one 20 ms later |
| early | answers as soon as the head is in, before any body |
| continue | `100 Continue`, then the answer |
| switch | `101 Switching Protocols` to a request that asked for nothing |
| reset | a head promising 100 bytes, 3 of them, then a reset |
| never | a head promising 100 bytes, 3 of them, then nothing |
| silent | no answer at all |
| nocontent | `204` |
| badframe | an answer with `Content-Length` and `Transfer-Encoding` both |
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import Any

import httptools


@dataclass
class Received:
    """One request as the upstream parsed it."""

    method: str
    target: str
    version: str
    fields: list[tuple[bytes, bytes]]
    body: bytes
    conn: int


@dataclass
class UpstreamConn:
    id: int
    data: bytearray = field(default_factory=bytearray)
    closed: bool = False
    parse_error: str | None = None


def _ok(target: str) -> bytes:
    body = f"ok {target}".encode("latin-1")
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Up: 1\r\n\r\n%b" % (len(body), body)


def answer_for(req: Received) -> list[Any]:
    """The script for one request: bytes to write, floats to sleep, "close", "abort",
    "hang"."""
    behaviour = req.target.split("?", 1)[0].rsplit("/", 1)[-1]
    target = req.target
    body = f"ok {target}".encode("latin-1")
    if behaviour == "chunked":
        return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (
            len(body), body)]
    if behaviour == "close":
        return [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body, "close"]
    if behaviour == "extra":
        stolen = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN"
        return [_ok(target) + stolen]
    if behaviour == "extra-later":
        return [_ok(target), 0.02, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN"]
    if behaviour == "continue":
        return [b"HTTP/1.1 100 Continue\r\n\r\n" + _ok(target)]
    if behaviour == "switch":
        return [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
                b"RAW-TUNNEL", "hang"]
    if behaviour == "reset":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", 0.01, "abort"]
    if behaviour == "never":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", "hang"]
    if behaviour == "silent":
        return ["hang"]
    if behaviour == "nocontent":
        return [b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n"]
    if behaviour == "badframe":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\n\r\n"]
    if req.method == "HEAD":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)]
    return [_ok(target)]


class _Conn(asyncio.Protocol):
    def __init__(self, upstream: RawUpstream) -> None:
        self.up = upstream
        self.rec = UpstreamConn(len(upstream.conns))
        upstream.conns.append(self.rec)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[Received] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._early = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.task = asyncio.ensure_future(self._answer())
        self.up.tasks.add(self.task)

    def data_received(self, data: bytes) -> None:
        self.rec.data += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # an upgrade request: answered as any other
        except httptools.HttpParserError as exc:
            self.rec.parse_error = str(exc)
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.rec.closed = True
        if self.task is not None:
            self.task.cancel()

    def on_message_begin(self) -> None:
        self._url, self._fields, self._body, self._early = b"", [], bytearray(), False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def _request(self) -> Received:
        return Received(
            self.parser.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            self.parser.get_http_version(),
            self._fields,
            bytes(self._body),
            self.rec.id,
        )

    def on_headers_complete(self) -> None:
        if self._url.split(b"?")[0].endswith(b"/early"):
            self._early = True
            req = self._request()
            self.up.received.append(req)
            self.queue.put_nowait(req)

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        if self._early:
            self.up.received[-1].body = bytes(self._body)
            return
        req = self._request()
        self.up.received.append(req)
        self.queue.put_nowait(req)

    async def _answer(self) -> None:
        while True:
            req = await self.queue.get()
            for step in answer_for(req):
                if self.transport is None or self.transport.is_closing():
                    return
                if isinstance(step, bytes):
                    self.transport.write(step)
                elif isinstance(step, float):
                    await asyncio.sleep(step)
                elif step == "close":
                    self.transport.close()
                    return
                elif step == "abort":
                    self.transport.abort()
                    return
                elif step == "hang":
                    await asyncio.sleep(3600)


class RawUpstream:
    """The scripted upstream (see the module's table); `url` once started."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.conns: list[UpstreamConn] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RawUpstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        self.tasks.clear()


@dataclass
class Exchange:
    """What a client got back for the bytes it sent: everything, and whether the proxy
    closed the connection (False: still open when the client stopped waiting)."""

    data: bytes
    closed: bool


async def exchange(
    port: int,
    request: bytes,
    *,
    idle: float = 0.3,
    limit: float = 5.0,
    half_close: bool = False,
    head: bool = False,
) -> Exchange:
    """Send `request`, read until the proxy closes, or for `idle` seconds more once what
    arrived ends in whole answers (before that, and after a partial answer, up to `limit`
    seconds in all: a loaded machine may be slow to answer, not wrong). `head`: the
    request is a HEAD, so an answer's head is all of it (the answers' parser cannot tell:
    it would wait out `limit` for a body that never comes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = bytearray()
    closed = False
    try:
        writer.write(request)
        if half_close:
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        settled = False
        while True:
            left = deadline - loop.time()
            wait = min(idle, left) if settled else left
            if wait <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                break
            except ConnectionError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            answers, rest = parse_answers(bytes(data), False)
            settled = (bool(answers) and rest == "") or (head and data.endswith(b"\r\n\r\n"))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return Exchange(bytes(data), closed)


@dataclass
class Answer:
    status: int
    fields: list[tuple[str, str]]
    body: bytes
    version: str


class _Answers:
    def __init__(self) -> None:
        self.done: list[Answer] = []
        self.begun = 0
        self.fields: list[tuple[str, str]] = []
        self.body = bytearray()
        self.parser: Any = None

    def on_message_begin(self) -> None:
        self.begun += 1
        self.fields, self.body = [], bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        p = self.parser
        self.done.append(
            Answer(p.get_status_code(), self.fields, bytes(self.body), p.get_http_version())
        )


def parse_answers(data: bytes, closed: bool) -> tuple[list[Answer], str]:
    """The whole answers in `data` (HEAD answers are not told apart: use them alone), and
    what follows them: "" (nothing), "partial" (an answer cut short) or "garbage"."""
    collect = _Answers()
    parser = httptools.HttpResponseParser(collect)
    collect.parser = parser
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return collect.done, "upgrade"
    except httptools.HttpParserError:
        return collect.done, "garbage"
    if collect.begun > len(collect.done):
        names = {name.lower() for name, _ in collect.fields}
        if closed and not names & {"content-length", "transfer-encoding"}:
            collect.on_message_complete()  # a body delimited by the close ends here
        else:
            return collect.done, "partial"
    return collect.done, ""
