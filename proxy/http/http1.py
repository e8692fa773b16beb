"""HTTP/1.1 framing for the fast path (`frontdoor`, `upstream`). Pure: bytes in, bytes out.

The fast path takes only the plainest requests — HTTP/1.1, origin-form target, no body,
no `Upgrade`/`Expect`, a head under 8 KiB — which is what nearly all API traffic is.
Everything else is handed to aiohttp's server byte for byte, so the
fast path never has to get request bodies, upgrades or pipelined body framing right:
a request that could smuggle (Content-Length with Transfer-Encoding, and anything else
with a body) is simply not its business. Heads are parsed by llhttp (httptools) in
strict mode, the same parser family aiohttp uses.

Fields travel as the bytes llhttp validated (the block form below); where (name, value)
pairs are needed they are latin-1 `str`, a lossless view of those bytes, so what the
header rewriting in `headers` sees is what goes on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

import httptools

from proxy.http.names import names_pattern

# aiohttp's own line limit; longer heads are aiohttp's to accept or refuse.
MAX_HEAD: Final = 8190
# aiohttp's server refuses a head with more fields than this (400); such heads are its.
MAX_FIELDS: Final = 128
HEAD_END: Final = b"\r\n\r\n"
# The end of a head as the parsers read it: an empty line, bare LFs included.
_EMPTY_LINE: Final = re.compile(rb"\n\r?\n")

# Header fields are kept as llhttp validated them, in one `bytes` per head: each field
# *preceded* by CRLF (b"\r\nHost: h\r\nAccept: */*"), so a field is found, dropped or
# read by one C-level regex over the block instead of a Python call per field. Strict
# llhttp guarantees what these patterns rely on: every field is `token ":" value`, no
# whitespace before the colon, no CR, LF or NUL inside a value, no obs-fold.


# The request fields the fast path reads, and those that mean the request is not its to
# take (a `Connection: upgrade` request stops llhttp with HttpParserUpgrade first): found
# in one pass.
_PICKED: Final = ("host", "authorization", "connection")
_NOT_OURS: Final = ("content-length", "transfer-encoding", "upgrade", "expect", "http2-settings")


def picked_names(request_id: str) -> frozenset[str]:
    """The names (lower-case, `-` as spelt) `PickedFields` matches as picked."""
    return frozenset({*_PICKED, *_NOT_OURS, "traceparent"} | ({request_id.lower()} - {""}))


class PickedFields:
    """The fields `HeadParser` picks out of a head in its one pass: the framing fields
    that make a head aiohttp's, those the request path reads on every request, the
    request's id (`headers.request_id`, per config) and `traceparent`, for the access
    line, and the names of the fields the upstream rewrite may cut (`cut`: a regex
    source, `headers.UpstreamRewrite` builds it) — in one pattern, so naming each request
    and finding what to drop cost no second pass."""

    __slots__ = (
        "cut_authorization",
        "cut_host",
        "cut_request_id",
        "cut_traceparent",
        "pattern",
        "request_id",
        "request_id_size",
    )

    def __init__(
        self,
        request_id: str = "X-Request-Id",
        cut: bytes = rb"(?!)",
        cut_picked: frozenset[str] = frozenset(),
    ) -> None:
        """`cut_picked`: which of the picked names (lower-case) the rewrite drops too:
        they match as picked, and are listed as cut besides (Connection always is)."""
        self.request_id = request_id.lower().encode("latin-1")
        names = picked_names(request_id)
        # The pattern matches only these names, so a match's length says which it is
        # (`HeadParser.parse`) without a `lower()` per field; a request-id name as long
        # as another (-1) is compared by name, and none (0) is never matched.
        self.request_id_size = len(request_id)
        if request_id and len(request_id) in {len(name) for name in names - {request_id.lower()}}:
            self.request_id_size = -1
        self.cut_authorization = "authorization" in cut_picked
        self.cut_host = "host" in cut_picked
        self.cut_request_id = bool(request_id) and request_id.lower() in cut_picked
        self.cut_traceparent = "traceparent" in cut_picked
        # Picked names first: a name both picked and cut is read as picked.
        self.pattern = re.compile(
            rb"\r\n(?i:(" + names_pattern(names) + rb")|(" + cut + rb")):[ \t]*([^\r]*)"
        )


DEFAULT_FIELDS: Final = PickedFields()
_FIELD: Final = re.compile(rb"\r\n([^:\r]+):[ \t]*([^\r]*)")

# RFC 9110 §7.6.1 plus the legacy ones every proxy strips (both directions; `headers`).
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization"}
    | {"te", "trailer", "transfer-encoding", "upgrade"}
)
_NO_BODY_STATUS: Final = frozenset({204, 304})
# The methods the fast path takes: those whose body-less requests aiohttp's door also
# forwards without `Content-Length: 0` (its client adds one to DELETE, POST, PUT...).
_METHODS: Final = frozenset({b"GET", b"OPTIONS", b"TRACE"})


def versionless(start: bytes) -> bool | None:
    """For the first bytes of a request head: True when its request line is whole, names no
    HTTP version (HTTP/0.9's `GET /path` and a line end) and no empty line has ended the
    head yet — llhttp and aiohttp then wait for fields of a request that is over, until
    the head timeout; False when the line has the three parts of an HTTP/1 request line,
    or the head has ended (the parser answers that itself: 505 or 400); None while the
    line is not whole yet. Empty lines before the request line are skipped (RFC 9112 §2.2)."""
    line = start.lstrip(b"\r\n")
    end = line.find(b"\n")
    if end < 0:
        return None
    if len(line[:end].rstrip(b"\r").split(b" ")) >= 3:
        return False
    return _EMPTY_LINE.search(line, end) is None


def fields_of(head: bytes) -> bytes:
    """The field block of a whole head: after the start line, before the blank line."""
    return head[head.index(b"\r\n") : -4]


def parse_fields(block: bytes) -> list[tuple[str, str]]:
    """(name, value) pairs of a field block, as llhttp reports them: leading whitespace
    of a value dropped, the rest kept; latin-1, so nothing is lost."""
    return [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in _FIELD.findall(block)
    ]


def field_values(block: bytes, pattern: re.Pattern[bytes]) -> list[str]:
    return [value.decode("latin-1") for value in pattern.findall(block)]


def values_pattern(name: str) -> re.Pattern[bytes]:
    """A pattern for `field_values`: every value of field `name`."""
    return re.compile(rb"\r\n(?i:" + re.escape(name.encode("latin-1")) + rb"):[ \t]*([^\r]*)")


def encode_fields(fields: Iterable[tuple[str, str]]) -> bytes:
    return "".join([f"\r\n{name}: {value}" for name, value in fields]).encode("latin-1")


class _Record:
    """Value semantics for the plain classes below: equal, hashed and shown by fields."""

    __slots__ = ()

    def _fields(self) -> tuple[object, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Record)
            and type(other) is type(self)
            and self._fields() == other._fields()
        )

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._fields()!r}"


class RequestHead(_Record):
    """One request head the fast path takes. Immutable (`Final`: mypy checks it, and the
    compiled class refuses writes). A plain class rather than a NamedTuple or frozen
    dataclass: one is made per request, and compiled this one costs a tenth as much."""

    __slots__ = (
        "authorization",
        "block",
        "connection",
        "cut",
        "host",
        "keep_alive",
        "method",
        "picked",
        "request_id",
        "target",
        "traceparent",
    )

    def __init__(
        self,
        method: str,
        target: str,
        block: bytes,
        keep_alive: bool,
        host: str | None = None,
        authorization: tuple[str, ...] = (),
        connection: tuple[str, ...] = (),
        request_id: str | None = None,
        traceparent: bytes | None = None,
        cut: tuple[bytes, ...] = (),
        picked: PickedFields | None = None,
    ) -> None:
        self.method: Final = method
        self.target: Final = target
        # The fields as received, in the block form above.
        self.block: Final = block
        self.keep_alive: Final = keep_alive
        # Picked out while parsing: the request path asks for these on every request.
        self.host: Final = host
        self.authorization: Final = authorization
        self.connection: Final = connection
        # The first of each, for the access line and the upstream (`PickedFields`).
        self.request_id: Final = request_id
        self.traceparent: Final = traceparent
        # The fields `picked` found that the upstream rewrite may cut, in order: name as
        # spelt and value, flat (`headers.UpstreamRewrite.block`).
        self.cut: Final = cut
        self.picked: Final = DEFAULT_FIELDS if picked is None else picked

    def pairs(self) -> list[tuple[str, str]]:
        return parse_fields(self.block)

    def _fields(self) -> tuple[object, ...]:
        return (
            self.method,
            self.target,
            self.block,
            self.keep_alive,
            self.host,
            self.authorization,
            self.connection,
            self.request_id,
            self.traceparent,
            self.cut,
            self.picked,
        )


class _Reports:
    """What llhttp reports of a request head through its callbacks (only those defined
    are called). It holds the parser only while the parser feeds it: a parser and the
    object of its callbacks that held each other would outlive their connection as a
    cycle, freed only by a full collection of the heap (issue 29)."""

    __slots__ = ("complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.complete = False
        self.keep_alive = False
        self.parser: Any = None

    def on_headers_complete(self) -> None:
        # Only valid here: llhttp resets its flags once the message completes.
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True


class HeadParser:
    """Request heads of one client connection, one at a time, through one llhttp parser.

    Only the start line and completion are reported by callbacks; the fields are read
    from the head's bytes. The parser is kept across the keep-alive requests it accepts
    and must be dropped once `parse` answers None (the connection then leaves the fast
    path)."""

    __slots__ = ("_parser", "_reports")

    def __init__(self) -> None:
        self._reports = _Reports()
        self._parser: Any = httptools.HttpRequestParser(self._reports)

    def parse(self, head: bytes, fields: PickedFields = DEFAULT_FIELDS) -> RequestHead | None:
        """The request in `head` (one complete head, ending in CRLFCRLF) when the fast
        path may take it; None when aiohttp must (anything unusual, malformed or
        carrying a body). `fields`: the config's (its request-id name)."""
        if len(head) > MAX_HEAD:
            return None
        reports = self._reports
        reports.complete = False
        reports.parser = self._parser
        try:
            self._parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # CONNECT, Upgrade
            return None
        finally:
            reports.parser = None
        if not reports.complete:
            return None
        # llhttp skips empty lines (and stray CRs) before the request line (RFC 9112
        # §2.2): so must the split below, or they would stay in the method.
        start = 0
        if head[0] == 13 or head[0] == 10:
            start = len(head) - len(head.lstrip(b"\r\n"))
        # llhttp has checked the request line: `method SP target SP HTTP/x.y`, though it
        # lets several spaces stand for one: such a line is aiohttp's, like all oddities.
        line_end = head.index(b"\r\n", start)
        parts = head[start:line_end].split(b" ")
        if len(parts) != 3:
            return None
        method, target, version = parts
        if version != b"HTTP/1.1" or method not in _METHODS or not target.startswith(b"/"):
            # HEAD: llhttp cannot be told a response answers HEAD (it would wait for the
            # body). Absolute-form and asterisk-form targets are aiohttp's.
            return None
        block = head[line_end:-4]
        # A field takes at least 4 bytes (`\r\nX:`): short blocks need no count.
        if len(block) > 4 * MAX_FIELDS and block.count(b"\r\n") > MAX_FIELDS:
            return None
        host: str | None = None
        authorization: list[str] = []
        connection: list[str] = []
        request_id: str | None = None
        traceparent: bytes | None = None
        request_id_size = fields.request_id_size
        cut: list[bytes] = []
        for name, cut_name, value in fields.pattern.findall(block):
            if cut_name:
                cut += (cut_name, value)
                continue
            size = len(name)
            if size == request_id_size or (
                request_id_size < 0 and name.lower() == fields.request_id
            ):
                if request_id is None:
                    request_id = value.decode("latin-1")
                if fields.cut_request_id:
                    cut += (name, value)
            elif size == 4:  # host
                if host is not None:
                    return None  # two: aiohttp refuses them (RFC 9112 §3.2)
                host = value.decode("latin-1")
                if fields.cut_host:
                    cut += (name, value)
            elif size == 13:  # authorization
                authorization.append(value.decode("latin-1"))
                if fields.cut_authorization:
                    cut += (name, value)
            elif size == 11:  # traceparent
                if traceparent is None:
                    traceparent = value  # bytes: only the access line reads it
                if fields.cut_traceparent:
                    cut += (name, value)
            elif size == 10:  # connection: hop-by-hop, always cut
                connection.append(value.decode("latin-1"))
                cut += (name, value)
            else:
                return None  # body framing, upgrade, expect: aiohttp's
        if host is None:
            return None  # an HTTP/1.1 request without Host: refused on aiohttp's side
        return RequestHead(
            method.decode("ascii"),
            target.decode("latin-1"),
            block,
            reports.keep_alive,
            host,
            tuple(authorization),
            tuple(connection),
            request_id,
            traceparent,
            tuple(cut),
            fields,
        )


def parse_request_head(head: bytes) -> RequestHead | None:
    """`HeadParser.parse` on a parser of its own."""
    return HeadParser().parse(head)


def encode_head(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A message head: start line, headers, blank line. Values are latin-1 (see above)."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers])
    return f"{start_line}\r\n{fields}\r\n".encode("latin-1")


class Framing(_Record):
    """How a response body reaches the client, and how it ends upstream. Immutable
    (`Final`); a plain class because one is made per answer (see RequestHead)."""

    __slots__ = ("chunked", "has_body", "hop_by_hop", "length", "until_close")

    def __init__(
        self,
        has_body: bool,
        chunked: bool,
        length: int | None = None,
        *,
        until_close: bool = False,
        hop_by_hop: bool = False,
    ) -> None:
        self.has_body: Final = has_body
        # Re-frame the body as chunks: the upstream chunked it, or ends it by closing.
        self.chunked: Final = chunked
        self.length: Final = length
        # The upstream ends the body by closing the connection (no length, not chunked).
        self.until_close: Final = until_close
        # The head carries hop-by-hop fields, which the client must not get: it is rebuilt.
        self.hop_by_hop: Final = hop_by_hop

    def _fields(self) -> tuple[object, ...]:
        return (self.has_body, self.chunked, self.length, self.until_close, self.hop_by_hop)


# The names an answer's framing depends on, and the hop-by-hop ones; their lengths, which
# pass most fields over without a `lower()`.
_FRAMING_NAMES: Final = frozenset(name.encode() for name in HOP_BY_HOP | {"content-length"})
_FRAMING_SIZES: Final = frozenset(len(name) for name in _FRAMING_NAMES)


class ResponseFields:
    """What an answer's framing depends on, told one field at a time as llhttp reads them
    (`UpstreamConnection.on_header`): llhttp has refused a malformed or conflicting
    Content-Length, Content-Length beside Transfer-Encoding, and CR, LF or NUL in a value.
    Reused for each answer of a connection (`reset`)."""

    __slots__ = ("encodings", "hop_by_hop", "length")

    def __init__(self) -> None:
        self.length: int | None = None
        self.encodings: list[bytes] = []
        self.hop_by_hop = False

    def reset(self) -> None:
        self.length = None
        self.encodings = []
        self.hop_by_hop = False

    def field(self, name: bytes, value: bytes) -> None:
        if len(name) not in _FRAMING_SIZES:
            return
        name = name.lower()
        if name == b"content-length":
            self.length = int(value)
        elif name == b"transfer-encoding":
            self.encodings.append(value)
            self.hop_by_hop = True
        elif name in _FRAMING_NAMES:
            self.hop_by_hop = True

    def framing(self, status: int) -> Framing:
        """The framing of an answer with these fields to a body-less, non-HEAD request
        (HEAD is never on the fast path)."""
        hop_by_hop = self.hop_by_hop
        if status in _NO_BODY_STATUS or status < 200:
            return Framing(has_body=False, chunked=False, hop_by_hop=hop_by_hop)
        if self.encodings:
            # Without a final `chunked` the body runs until the upstream closes.
            until_close = b"chunked" not in b",".join(self.encodings).lower()
            return Framing(True, True, until_close=until_close, hop_by_hop=True)
        if self.length is None:
            return Framing(True, True, until_close=True, hop_by_hop=hop_by_hop)
        return Framing(True, False, self.length, hop_by_hop=hop_by_hop)


class _Fields:
    """llhttp's field callbacks into a `ResponseFields`."""

    __slots__ = ("fields",)

    def __init__(self, fields: ResponseFields) -> None:
        self.fields = fields

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.field(name, value)


def response_framing(status: int, block: bytes) -> Framing:
    """The framing of an answer with `status` and this block of fields, read by llhttp
    as `UpstreamConnection` reads an upstream's (for tables and equivalence tests)."""
    fields = ResponseFields()
    httptools.HttpResponseParser(_Fields(fields)).feed_data(
        b"HTTP/1.1 %d X%b\r\n\r\n" % (status, block)
    )
    return fields.framing(status)


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


def client_head(
    status: int,
    head: bytes,
    block: bytes,
    *,
    framing: Framing,
    close: bool,
    clean: Callable[[list[tuple[str, str]]], list[tuple[str, str]]],
) -> bytes:
    """The client's response head from the upstream's `head` (whole, as received) and
    its `block` of fields.

    The common answer — HTTP/1.1, sized or body-less, no hop-by-hop field — goes out as
    the upstream wrote it, reason phrase included, plus `Connection: close` when it is the
    connection's last; anything else is rebuilt from its fields, cleaned by `clean` (`headers.client_items`)."""
    if (
        not framing.hop_by_hop
        and not framing.chunked
        and head.startswith(b"HTTP/1.1 ")
        and head[12:13] == b" "  # `HTTP/1.1 200 `: the status line is whole
    ):
        return head[:-2] + b"Connection: close\r\n\r\n" if close else head
    status_line = head[: head.index(b"\r\n")].split(b" ", 2)
    reason = status_line[2].decode("latin-1") if len(status_line) > 2 else ""
    return response_head(status, reason, clean(parse_fields(block)), framing=framing, close=close)


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
