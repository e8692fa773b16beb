"""HTTP/1.1 framing for the fast path (`frontdoor`, `upstream`). Pure: bytes in, bytes out.

The fast path takes only the plainest requests — HTTP/1.1, origin-form target, no body,
no `Upgrade`/`Expect`, a head under 8 KiB — which is what nearly all API traffic is.
Everything else is handed to aiohttp's server byte for byte (`TAKEN`/`HANDOFF`), so the
fast path never has to get request bodies, upgrades or pipelined body framing right:
a request that could smuggle (Content-Length with Transfer-Encoding, and anything else
with a body) is simply not its business. Heads are parsed by llhttp (httptools) in
strict mode, the same parser family aiohttp uses.

Header values travel as latin-1 `str`: a lossless view of the bytes, so what the header
rewriting in `headers` sees is what goes on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import httptools

# aiohttp's own line limit; longer heads are aiohttp's to accept or refuse.
MAX_HEAD: Final = 8190
HEAD_END: Final = b"\r\n\r\n"

# Request headers that mean the request is not the fast path's to take. (A `Connection:
# upgrade` request stops llhttp with HttpParserUpgrade before it completes.)
_HANDOFF_HEADERS: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"http2-settings"}
)
_NO_BODY_STATUS: Final = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    keep_alive: bool
    # Picked out while parsing: the request path asks for these on every request.
    host: str | None = None
    authorization: tuple[str, ...] = ()


class _HeadCollector:
    """httptools callbacks for one request head."""

    __slots__ = (
        "authorization",
        "complete",
        "headers",
        "host",
        "keep_alive",
        "parser",
        "refuse",
        "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.host: str | None = None
        self.authorization: list[str] = []
        self.refuse = False
        self.complete = False
        self.keep_alive = False
        self.parser: Any = None

    def on_headers_complete(self) -> None:
        # Only valid here: llhttp resets its flags once the message completes.
        self.keep_alive = self.parser.should_keep_alive()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in _HANDOFF_HEADERS:
            self.refuse = True
        text = value.decode("latin-1")
        self.headers.append((name.decode("latin-1"), text))
        if lname == b"authorization":
            self.authorization.append(text)
        elif lname == b"host" and self.host is None:
            self.host = text

    def on_message_complete(self) -> None:
        self.complete = True


def parse_request_head(head: bytes) -> RequestHead | None:
    """The request in `head` (one complete head, ending in CRLFCRLF) when the fast path may
    take it; None when aiohttp must (anything unusual, malformed or carrying a body)."""
    if len(head) > MAX_HEAD:
        return None
    collector = _HeadCollector()
    parser = collector.parser = httptools.HttpRequestParser(collector)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # CONNECT, Upgrade
        return None
    if collector.refuse or not collector.complete or parser.get_http_version() != "1.1":
        return None
    method = parser.get_method().decode("ascii")
    if method == "HEAD":
        # llhttp cannot be told a response answers HEAD (it would wait for the body).
        return None
    target = collector.url.decode("latin-1")
    if not target.startswith("/"):
        return None
    return RequestHead(
        method=method,
        target=target,
        headers=tuple(collector.headers),
        keep_alive=collector.keep_alive,
        host=collector.host,
        authorization=tuple(collector.authorization),
    )


def encode_head(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A message head: start line, headers, blank line. Values are latin-1 (see above)."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers])
    return f"{start_line}\r\n{fields}\r\n".encode("latin-1")


def request_head(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    return encode_head(f"{method} {target} HTTP/1.1", headers)


@dataclass(frozen=True, slots=True)
class Framing:
    """How a response body reaches the client."""

    has_body: bool
    # Re-frame the body as chunks: the upstream chunked it, or ends it by closing.
    chunked: bool
    length: int | None = None


def response_framing(status: int, headers: Iterable[tuple[str, str]]) -> Framing:
    """Framing for the client from the upstream's answer to a body-less, non-HEAD request
    (HEAD is never on the fast path)."""
    if status in _NO_BODY_STATUS or status < 200:
        return Framing(has_body=False, chunked=False)
    for name, value in headers:
        if name.lower() == "content-length":
            # llhttp has already refused a malformed or conflicting one.
            return Framing(has_body=True, chunked=False, length=int(value))
    return Framing(has_body=True, chunked=True)


def response_head(
    status: int,
    reason: str,
    headers: Iterable[tuple[str, str]],
    *,
    framing: Framing,
    close: bool,
) -> bytes:
    """The client's response head. `headers` are already cleaned of hop-by-hop ones."""
    out = list(headers)
    if framing.has_body and framing.chunked:
        out.append(("Transfer-Encoding", "chunked"))
    if close:
        out.append(("Connection", "close"))
    return encode_head(f"HTTP/1.1 {status} {reason or 'Unknown'}", out)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


def simple_response(
    status: int, reason: str, headers: Iterable[tuple[str, str]], body: bytes, *, close: bool
) -> bytes:
    """A whole response the proxy answers itself (refusals, 502/504)."""
    out = [*headers, ("Content-Length", str(len(body)))]
    if close:
        out.append(("Connection", "close"))
    return encode_head(f"HTTP/1.1 {status} {reason}", out) + body
