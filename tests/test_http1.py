"""The fast path's framing, fed bytes and checked bytes (no I/O)."""

from __future__ import annotations

import pytest

from proxy.http import http1

GET = b"GET /api/x?q=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "taken"),
    [
        (GET, True),
        (b"TRACE /api/x HTTP/1.1\r\nHost: h\r\n\r\n", True),
        # aiohttp's door sends these up with `Content-Length: 0`: they are its own.
        (b"DELETE /api/x HTTP/1.1\r\nHost: h\r\n\r\n", False),
        (b"POST /api/x HTTP/1.1\r\nHost: h\r\n\r\n", False),
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
        # llhttp lets runs of spaces through; the fast path leaves such lines to aiohttp.
        (b"GET  /api/x HTTP/1.1\r\nHost: h\r\n\r\n", False),
        (b"GET /api/x  HTTP/1.1\r\nHost: h\r\n\r\n", False),
        (b"GET /api/x HTTP/1.1 \r\nHost: h\r\n\r\n", False),
        (b"GET\t/api/x HTTP/1.1\r\nHost: h\r\n\r\n", False),
        (b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", False),
        # Not exactly one Host: aiohttp's side refuses it (RFC 9112 §3.2).
        (b"GET /api/x HTTP/1.1\r\n\r\n", False),
        (b"GET /api/x HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n", False),
        # aiohttp's server takes at most 128 fields; past that, its 400.
        (b"GET /x HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 127 + b"\r\n", True),
        (b"GET /x HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 128 + b"\r\n", False),
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
    assert head.block == b"\r\nHost: h\r\nX-A: 1\r\nx-a: caf\xe9\r\nAccept: */*"
    assert head.pairs() == [("Host", "h"), ("X-A", "1"), ("x-a", "caf\xe9"), ("Accept", "*/*")]
    assert head.keep_alive is True
    # latin-1 both ways: the bytes come back exactly, from the block and from the pairs.
    start = f"{head.method} {head.target} HTTP/1.1".encode("latin-1")
    assert start + head.block + http1.HEAD_END == raw
    assert start + http1.encode_fields(head.pairs()) + http1.HEAD_END == raw


@pytest.mark.parametrize(
    ("block", "pairs"),
    [
        (b"", []),
        (b"\r\nA: 1", [("A", "1")]),
        # As llhttp reports values: leading whitespace dropped, trailing kept.
        (b"\r\nA:  x  y \t\r\nB:\r\nc:\t", [("A", "x  y \t"), ("B", ""), ("c", "")]),
        (b"\r\nA: 1\r\nA: 2", [("A", "1"), ("A", "2")]),
        (b"\r\nX: a:b:c", [("X", "a:b:c")]),
    ],
)
def test_field_blocks(block: bytes, pairs: list[tuple[str, str]]) -> None:
    assert http1.parse_fields(block) == pairs
    head = b"GET / HTTP/1.1\r\nHost: h" + block + b"\r\n\r\n"
    assert http1.fields_of(head) == b"\r\nHost: h" + block
    parsed = http1.parse_request_head(head)
    assert parsed is not None and parsed.block == b"\r\nHost: h" + block


def test_field_values_by_name() -> None:
    block = b"\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for:2.2.2.2 \r\nX-Forwarded-Fort: no"
    pattern = http1.values_pattern("X-Forwarded-For")
    assert http1.field_values(block, pattern) == ["1.1.1.1", "2.2.2.2 "]


def test_one_parser_takes_the_heads_of_a_keep_alive_connection() -> None:
    parser = http1.HeadParser()
    first = parser.parse(b"GET /a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\r\n")
    second = parser.parse(b"OPTIONS /b?x HTTP/1.1\r\nHost: g\r\n\r\n")
    third = parser.parse(b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert first == http1.RequestHead(
        "GET", "/a", b"\r\nHost: h\r\nAuthorization: Bearer t", True, "h", ("Bearer t",)
    )
    assert second == http1.RequestHead("OPTIONS", "/b?x", b"\r\nHost: g", True, "g")
    assert third == http1.RequestHead(
        "GET", "/c", b"\r\nHost: h\r\nConnection: close", False, "h", (), ("close",),
        cut=(b"Connection",),  # hop-by-hop: listed for the rewrite to cut
    )


def test_one_parser_reads_heads_in_turn_each_afresh() -> None:
    parser = http1.HeadParser()
    a = b"GET /a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\r\n"
    b = b"GET /a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer u\r\n\r\n"
    first = parser.parse(a)
    assert first is not None and first.authorization == ("Bearer t",)
    assert parser.parse(a) == first
    second = parser.parse(b)
    assert second is not None and second.authorization == ("Bearer u",)
    assert parser.parse(a) == first
    closing = b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    # llhttp takes nothing after a `Connection: close` request: the connection ends.
    assert parser.parse(closing) == http1.RequestHead(
        "GET", "/a", b"\r\nHost: h\r\nConnection: close", False, "h", (), ("close",),
        cut=(b"Connection",),
    )
    assert parser.parse(closing) is None
    assert http1.HeadParser().parse(b"GET /a HTTP/1.0\r\n\r\n") is None


@pytest.mark.parametrize(
    ("fields", "host", "authorization"),
    [
        (b"Host: a\r\n", "a", ()),
        (b"host: a\r\n", "a", ()),
        (b"Host: a\r\nAuthorization: Bearer x\r\n", "a", ("Bearer x",)),
        (b"HOST: a\r\nauthorization: Bearer x\r\nAUTHORIZATION: Basic y\r\n", "a",
         ("Bearer x", "Basic y")),
        (b"Host: h\r\nX-Authorization: z\r\nAuthorization-X: z\r\n", "h", ()),
    ],
)
def test_host_and_authorization_are_picked_out_while_parsing(
    fields: bytes, host: str, authorization: tuple[str, ...]
) -> None:
    head = http1.parse_request_head(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
    assert head is not None
    assert (head.host, head.authorization) == (host, authorization)


@pytest.mark.parametrize("prefix", [b"\r\n", b"\n", b"\n\n\r", b"\r\n\r"])
def test_empty_lines_before_the_request_line_stay_out_of_the_method(prefix: bytes) -> None:
    """llhttp skips them (RFC 9112 §2.2): so does the request line's split."""
    for method in (b"GET", b"OPTIONS"):
        head = http1.parse_request_head(prefix + method + b" /x HTTP/1.1\r\nHost: h\r\n\r\n")
        assert head is not None
        assert (head.method, head.target, head.block) == (method.decode(), "/x", b"\r\nHost: h")
    assert http1.parse_request_head(prefix + b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n") is None


@pytest.mark.parametrize(
    ("connection", "keep_alive"),
    [(None, True), (b"close", False), (b"Close", False), (b"keep-alive", True)],
)
def test_keep_alive(connection: bytes | None, keep_alive: bool) -> None:
    extra = b"Connection: " + connection + b"\r\n" if connection else b""
    head = http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n")
    assert head is not None
    assert head.keep_alive is keep_alive


SIZED_12 = http1.Framing(True, False, 12)
RECHUNK = http1.Framing(True, True, hop_by_hop=True)
UNTIL_CLOSE = http1.Framing(True, True, until_close=True)
NO_BODY = http1.Framing(False, False)


@pytest.mark.parametrize(
    ("status", "block", "framing"),
    [
        (200, b"\r\nContent-Length: 12", SIZED_12),
        (200, b"\r\ncontent-length:0", http1.Framing(True, False, 0)),
        # As llhttp reports values: trailing whitespace is not part of them.
        (200, b"\r\nContent-Length: 12 \t", SIZED_12),
        (200, b"\r\nTransfer-Encoding: chunked ", RECHUNK),
        # Another name, only alike: not framing.
        (200, b"\r\nContent_Length: 12", UNTIL_CLOSE),
        (200, b"\r\nX-Content-Length: 3", UNTIL_CLOSE),
        (200, b"\r\nTransfer-Encoding: chunked", RECHUNK),
        (200, b"\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked", RECHUNK),
        # Delimited by the upstream closing: re-framed as chunks for the client.
        (200, b"\r\ntransfer-encoding: gzip", http1.Framing(True, True, until_close=True, hop_by_hop=True)),
        (200, b"\r\nKeep-Alive: 5\r\nContent-Length: 12", http1.Framing(True, False, 12, hop_by_hop=True)),
        (204, b"\r\nConnection: close", http1.Framing(False, False, hop_by_hop=True)),
        (200, b"", UNTIL_CLOSE),
        (404, b"\r\nContent-Type: text/plain", UNTIL_CLOSE),
        (204, b"", NO_BODY),
        (304, b"\r\nContent-Length: 12", NO_BODY),
        (103, b"\r\nLink: </a>", NO_BODY),
    ],
)
def test_response_framing(status: int, block: bytes, framing: http1.Framing) -> None:
    assert http1.response_framing(status, block) == framing


def _clean(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    from proxy.http.headers import client_items

    return client_items(pairs)


@pytest.mark.parametrize(
    ("head", "close", "out"),
    [
        # The common answer goes out as the upstream wrote it, spacing and all.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX:a  \r\n\r\n", False,
         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX:a  \r\n\r\n"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", True,
         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False,
         b"HTTP/1.1 204 No Content\r\n\r\n"),
        # Hop-by-hop fields, and those Connection names, are removed: rebuilt.
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
         b"X-Secret: 1\r\nContent-Length: 2\r\n\r\n", False,
         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nA: 1\r\n\r\n", False,
         b"HTTP/1.1 200 OK\r\nA: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        # Delimited by close: re-framed as chunks.
        (b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n", True,
         b"HTTP/1.1 200 OK\r\nA: 1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
        # The client hears HTTP/1.1 from the proxy, whatever the upstream spoke.
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", False,
         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
        (b"HTTP/1.0 201\r\nContent-Length: 2\r\n\r\n", False,
         b"HTTP/1.1 201 Unknown\r\nContent-Length: 2\r\n\r\n"),
        # Not a hop-by-hop field, only alike.
        (b"HTTP/1.1 200 OK\r\nTE-X: 1\r\nX-Upgrade: 2\r\nContent-Length: 2\r\n\r\n", False,
         b"HTTP/1.1 200 OK\r\nTE-X: 1\r\nX-Upgrade: 2\r\nContent-Length: 2\r\n\r\n"),
    ],
)
def test_client_head_bytes(head: bytes, close: bool, out: bytes) -> None:
    status = int(head[9:12])
    block = http1.fields_of(head)
    framing = http1.response_framing(status, block)
    assert http1.client_head(status, head, framing=framing, close=close, clean=_clean) == out


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


@pytest.mark.parametrize(
    ("start", "verdict"),
    [
        (b"GET /x", None),  # the line is not whole yet
        (b"GET /x\r\n", True),  # HTTP/0.9's simple request: nobody would answer it
        (b"GET /x\n", True),
        (b"\r\nGET /x\r\n", True),  # empty lines before a request line are skipped
        (b"GET\r\n", True),
        (b"GET /x\r\nHost: a\r\n", True),  # fields after it: still no end in sight
        (b"GET /x HTTP/1.1\r\n", False),  # an HTTP/1 line: the parser's
        (b"GET /x \r\n", False),  # three parts, one empty: the parser refuses it
        (b"GET /x\r\n\r\n", False),  # the head ended: the parser answers (505)
        (b"GET /x\n\n", False),  # (400)
        (b"GET /x\r\nHost: a\r\n\n", False),
        (b"GET /public/c1797/\nHTTP/1.1\r\n\r\n", False),  # http-garden's trophy 9
    ],
)
def test_versionless(start: bytes, verdict: bool | None) -> None:
    assert http1.versionless(start) is verdict


def test_a_request_id_name_is_read_as_such_whatever_else_it_names() -> None:
    """The configured request-id name is read as the request's id, in any case: one as
    long as another picked name, and one that names another picked field, in its place."""
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-TRACE-ID1: abc\r\ntraceparent: t\r\n\r\n"
    parsed = http1.HeadParser().parse(head, http1.PickedFields("X-Trace-Id1"))
    assert parsed is not None
    assert (parsed.host, parsed.request_id, parsed.traceparent) == ("h", "abc", b"t")
    parsed = http1.HeadParser().parse(head, http1.PickedFields("Traceparent"))
    assert parsed is not None and (parsed.request_id, parsed.traceparent) == ("t", None)
    parsed = http1.HeadParser().parse(head, http1.PickedFields(""))
    assert parsed is not None and (parsed.request_id, parsed.traceparent) == (None, b"t")


def test_field_names_remembered_are_bounded() -> None:
    """`PickedFields` remembers what each name as spelt is; clients choose the names, so
    it keeps a bounded number of them, none long, and says the same after forgetting."""
    fields = http1.PickedFields("X-Request-Id", cut=frozenset({"x-real-ip"}), prefix="x-auth-")
    names = [b"X-%d" % i for i in range(3 * http1._KNOWN_NAMES)] + [b"X" * 100]
    for name in names:
        assert fields.kind(name) == http1._KEEP
        assert len(fields._known) <= http1._KNOWN_NAMES
    assert b"X" * 100 not in fields._known
    for name, kind in [
        (b"X_Real-IP", http1._CUT),
        (b"x_auth_anything", http1._CUT),
        (b"x-request-id", http1._REQUEST_ID),
        (b"HOST", http1._HOST),
        (b"Host_", http1._KEEP),
        (b"Content_Length", http1._KEEP),
        (b"content-LENGTH", http1._NOT_OURS_KIND),
    ]:
        assert fields.kind(name) == kind == fields.kind(name), name
