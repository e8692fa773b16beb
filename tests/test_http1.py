"""The fast path's framing, fed bytes and checked bytes (no I/O)."""

from __future__ import annotations

import pytest

from proxy import http1

GET = b"GET /api/x?q=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "taken"),
    [
        (GET, True),
        (b"DELETE /api/x HTTP/1.1\r\nHost: h\r\n\r\n", True),
        (b"OPTIONS /api/x HTTP/1.1\r\nHost: h\r\n\r\n", True),
        # No body on the fast path: any body framing goes to aiohttp.
        (b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n", False),
        (b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", False),
        (b"GET /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"GET /api/x HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n", False),
        (b"PUT /api/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n", False),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", False),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n", False),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", False),
        # llhttp cannot be told that a response answers HEAD.
        (b"HEAD /api/x HTTP/1.1\r\nHost: h\r\n\r\n", False),
        (b"GET /api/x HTTP/1.0\r\nHost: h\r\n\r\n", False),
        (b"GET http://h/api/x HTTP/1.1\r\nHost: h\r\n\r\n", False),
        (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", False),
        # Malformed: aiohttp's parser answers those.
        (b"GET /api/x HTTP/1.1\r\nBad Header: v\r\n\r\n", False),
        (b"GET /api/x HTTP/1.1\r\nX: a\x00b\r\n\r\n", False),
        (b"GET /api/x HTTP/1.1\r\n folded: v\r\n\r\n", False),
        (b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", False),
        (b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", False),
    ],
)
def test_which_heads_the_fast_path_takes(raw: bytes, taken: bool) -> None:
    assert (http1.parse_request_head(raw) is not None) is taken


def test_parsed_head_keeps_order_case_and_bytes() -> None:
    raw = b"GET /p%2Fq?x=%20 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: caf\xe9\r\nAccept: */*\r\n\r\n"
    head = http1.parse_request_head(raw)
    assert head is not None
    assert head.method == "GET"
    assert head.target == "/p%2Fq?x=%20"
    assert head.headers == (("Host", "h"), ("X-A", "1"), ("x-a", "caf\xe9"), ("Accept", "*/*"))
    assert head.keep_alive is True
    # latin-1 both ways: the bytes come back exactly.
    assert http1.request_head(head.method, head.target, head.headers) == raw


@pytest.mark.parametrize(
    ("fields", "host", "authorization"),
    [
        (b"", None, ()),
        (b"Host: a\r\n", "a", ()),
        (b"host: a\r\nHOST: b\r\n", "a", ()),  # the first, as a lookup would find
        (b"Authorization: Bearer x\r\n", None, ("Bearer x",)),
        (b"authorization: Bearer x\r\nAUTHORIZATION: Basic y\r\n", None, ("Bearer x", "Basic y")),
        (b"Host: h\r\nX-Authorization: z\r\nAuthorization-X: z\r\n", "h", ()),
    ],
)
def test_host_and_authorization_are_picked_out_while_parsing(
    fields: bytes, host: str | None, authorization: tuple[str, ...]
) -> None:
    head = http1.parse_request_head(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
    assert head is not None
    assert (head.host, head.authorization) == (host, authorization)


@pytest.mark.parametrize(
    ("connection", "keep_alive"),
    [(None, True), (b"close", False), (b"Close", False), (b"keep-alive", True)],
)
def test_keep_alive(connection: bytes | None, keep_alive: bool) -> None:
    extra = b"Connection: " + connection + b"\r\n" if connection else b""
    head = http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n")
    assert head is not None
    assert head.keep_alive is keep_alive


@pytest.mark.parametrize(
    ("status", "headers", "framing"),
    [
        (200, [("Content-Length", "12")], http1.Framing(True, False, 12)),
        (200, [("content-length", "0")], http1.Framing(True, False, 0)),
        (200, [("Transfer-Encoding", "chunked")], http1.Framing(True, True)),
        # Delimited by the upstream closing: re-framed as chunks for the client.
        (200, [], http1.Framing(True, True)),
        (404, [("Content-Type", "text/plain")], http1.Framing(True, True)),
        (204, [], http1.Framing(False, False)),
        (304, [("Content-Length", "12")], http1.Framing(False, False)),
    ],
)
def test_response_framing(
    status: int, headers: list[tuple[str, str]], framing: http1.Framing
) -> None:
    assert http1.response_framing(status, headers) == framing


def test_response_head_bytes() -> None:
    chunked = http1.Framing(has_body=True, chunked=True)
    assert http1.response_head(200, "OK", [("A", "1")], framing=chunked, close=False) == (
        b"HTTP/1.1 200 OK\r\nA: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sized = http1.Framing(has_body=True, chunked=False, length=3)
    assert http1.response_head(
        201, "", [("Content-Length", "3")], framing=sized, close=True
    ) == (b"HTTP/1.1 201 Unknown\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")


def test_chunks_and_simple_responses() -> None:
    assert http1.chunk(b"hello world!") == b"c\r\nhello world!\r\n"
    assert http1.LAST_CHUNK == b"0\r\n\r\n"
    assert http1.simple_response(502, "Bad Gateway", [("X", "y")], b"{}", close=False) == (
        b"HTTP/1.1 502 Bad Gateway\r\nX: y\r\nContent-Length: 2\r\n\r\n{}"
    )
