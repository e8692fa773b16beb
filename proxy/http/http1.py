"""HTTP/1.1 framing for the fast path (`frontdoor`, `upstream`). Pure: bytes in, bytes out.

The fast path takes only the plainest requests — HTTP/1.1, origin-form target, no body,
no `Upgrade`/`Expect`, a head under 8 KiB — which is what nearly all API traffic is.
Everything else is handed to aiohttp's server byte for byte, so the
fast path never has to get request bodies, upgrades or pipelined body framing right:
a request that could smuggle (Content-Length with Transfer-Encoding, and anything else
with a body) is simply not its business. Heads are parsed by llhttp (httptools) in
strict mode, the same parser family aiohttp uses.

Fields travel as the bytes llhttp validated (the block form below). llhttp reports each
field of a request head as it reads it (`on_header`), and `PickedFields` sorts it by its
name with a dict lookup: the fields the request path reads, those that make a head
aiohttp's, and the names of those the upstream rewrite may cut out of the block, so no
pass over the block is needed. Where (name, value) pairs are needed they are latin-1
`str`, a lossless view of those bytes, so what the header rewriting in `headers` sees is
what goes on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

import httptools

# aiohttp's own line limit; longer heads are aiohttp's to accept or refuse.
MAX_HEAD: Final = 8190
# aiohttp's server refuses a head with more fields than this (400); such heads are its.
MAX_FIELDS: Final = 128
HEAD_END: Final = b"\r\n\r\n"
# The end of a head as the parsers read it: an empty line, bare LFs included.
_EMPTY_LINE: Final = re.compile(rb"\n\r?\n")

# Header fields are kept as llhttp validated them, in one `bytes` per head: each field
# *preceded* by CRLF (b"\r\nHost: h\r\nAccept: */*"), so a field is found or read by one
# C-level regex over the block, or cut from the CRLF before it to the next, instead of a
# Python call per field. Strict llhttp guarantees what this relies on: every field is
# `token ":" value`, no whitespace before the colon, no CR, LF or NUL inside a value, no
# obs-fold.


# The request fields the fast path reads, and those that mean the request is not its to
# take (a `Connection: upgrade` request stops llhttp with HttpParserUpgrade first).
_PICKED: Final = ("host", "authorization", "connection")
_NOT_OURS: Final = ("content-length", "transfer-encoding", "upgrade", "expect", "http2-settings")

# What `PickedFields.kind` says of a field: kept, or one of the picked ones; `_CUT` added
# when the upstream rewrite may cut it.
_KEEP: Final = 0
_HOST: Final = 1
_AUTHORIZATION: Final = 2
_CONNECTION: Final = 3
_REQUEST_ID: Final = 4
_TRACEPARENT: Final = 5
_NOT_OURS_KIND: Final = 6
_CUT: Final = 8
# Names remembered as spelt (`PickedFields.kind`): at most this many, none longer.
_KNOWN_NAMES: Final = 512
_KNOWN_SIZE: Final = 64


def picked_names(request_id: str) -> frozenset[str]:
    """The names (lower-case, `-` as spelt) `PickedFields` picks."""
    return frozenset({*_PICKED, *_NOT_OURS, "traceparent"} | ({request_id.lower()} - {""}))


class PickedFields:
    """What `HeadParser` picks out of a head as llhttp reports its fields: the framing
    fields that make a head aiohttp's, those the request path reads on every request, the
    request's id (`headers.request_id`, per config) and `traceparent`, for the access
    line, and the fields the upstream rewrite may cut (`headers.UpstreamRewrite` says
    which) — so naming each request and finding what to drop cost no second pass."""

    __slots__ = ("_cut", "_known", "_picked", "_prefix")

    def __init__(
        self,
        request_id: str = "X-Request-Id",
        cut: frozenset[str] = frozenset(),
        prefix: str | None = None,
        cut_picked: frozenset[str] = frozenset(),
    ) -> None:
        """`cut`: the names the rewrite may cut (lower-case, `-`), in any spelling with
        `_` for `-`, and those that start with `prefix` (the same form) — unless spelt as
        one of the picked names: `cut_picked` says which of those (lower-case) it may cut
        (Connection always)."""
        picked = {name: _NOT_OURS_KIND for name in _NOT_OURS} | {
            "host": _HOST,
            "authorization": _AUTHORIZATION,
            "connection": _CONNECTION,
            "traceparent": _TRACEPARENT,
        }
        if request_id:
            # Read as the request's id even where it names another picked field.
            picked[request_id.lower()] = _REQUEST_ID
        self._picked = {
            name.encode("latin-1"): kind
            | (_CUT if kind == _CONNECTION or name in cut_picked else 0)
            for name, kind in picked.items()
        }
        self._cut = frozenset(name.encode("latin-1") for name in cut)
        self._prefix = None if prefix is None else prefix.encode("latin-1")
        # Field names as spelt, by what `_classify` said: a client sends the same few on
        # every request. Bounded, since clients choose them.
        self._known: dict[bytes, int] = {}

    def kind(self, name: bytes) -> int:
        """What a field named `name` (as spelt) is: `_KEEP`, a picked one, plus `_CUT`."""
        kind = self._known.get(name)
        if kind is None:
            kind = self._classify(name)
            if len(name) <= _KNOWN_SIZE:
                if len(self._known) >= _KNOWN_NAMES:
                    self._known.clear()
                self._known[name] = kind
        return kind

    def _classify(self, name: bytes) -> int:
        lname = name.lower()
        kind = self._picked.get(lname)
        if kind is not None:
            return kind
        folded = lname.replace(b"_", b"-")
        prefix = self._prefix
        if folded in self._cut or (prefix is not None and folded.startswith(prefix)):
            return _CUT
        return _KEEP


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
        # The names (as spelt) of the fields `picked` says the upstream rewrite may cut,
        # in order (`headers.UpstreamRewrite.block`).
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
    are called): each field as llhttp validated it, picked as `fields` says. It holds the
    parser only while the parser feeds it: a parser and the object of its callbacks that
    held each other would outlive their connection as a cycle, freed only by a full
    collection of the heap (issue 29)."""

    __slots__ = (
        "authorization",
        "complete",
        "connection",
        "cut",
        "declined",
        "fields",
        "host",
        "keep_alive",
        "parser",
        "request_id",
        "traceparent",
    )

    def __init__(self) -> None:
        self.fields = DEFAULT_FIELDS
        self.parser: Any = None
        self.start(DEFAULT_FIELDS)

    def start(self, fields: PickedFields) -> None:
        """Afresh, for a head read as `fields` says."""
        self.fields = fields
        self.complete = False
        self.keep_alive = False
        self.declined = False
        self.host: str | None = None
        self.authorization: tuple[str, ...] = ()
        self.connection: tuple[str, ...] = ()
        self.request_id: str | None = None
        self.traceparent: bytes | None = None
        self.cut: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp's value: without the whitespace before it, with any after it.
        kind = self.fields.kind(name)
        if kind == _KEEP:
            return
        if kind >= _CUT:
            self.cut.append(name)
            kind -= _CUT
        if kind == _REQUEST_ID:
            if self.request_id is None:
                self.request_id = value.decode("latin-1")
        elif kind == _HOST:
            if self.host is not None:
                self.declined = True  # two: aiohttp refuses them (RFC 9112 §3.2)
            self.host = value.decode("latin-1")
        elif kind == _AUTHORIZATION:
            self.authorization += (value.decode("latin-1"),)
        elif kind == _TRACEPARENT:
            if self.traceparent is None:
                self.traceparent = value  # bytes: only the access line reads it
        elif kind == _CONNECTION:
            self.connection += (value.decode("latin-1"),)
        elif kind == _NOT_OURS_KIND:
            self.declined = True  # body framing, upgrade, expect: aiohttp's

    def on_headers_complete(self) -> None:
        # Only valid here: llhttp resets its flags once the message completes.
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True


class HeadParser:
    """Request heads of one client connection, one at a time, through one llhttp parser.

    The start line is read from the head's bytes, the fields and completion as llhttp
    reports them. The parser is kept across the keep-alive requests it accepts and must
    be dropped once `parse` answers None (the connection then leaves the fast path)."""

    __slots__ = ("_parser", "_reports")

    def __init__(self) -> None:
        self._reports = _Reports()
        self._parser: Any = httptools.HttpRequestParser(self._reports)

    def parse(self, head: bytes, fields: PickedFields = DEFAULT_FIELDS) -> RequestHead | None:
        """The request in `head` (one complete head, ending in CRLFCRLF) when the fast
        path may take it; None when aiohttp must (anything unusual, malformed or
        carrying a body). `fields`: the config's (its request-id name, what it may cut)."""
        if len(head) > MAX_HEAD:
            return None
        reports = self._reports
        reports.start(fields)
        reports.parser = self._parser
        try:
            self._parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # CONNECT, Upgrade
            return None
        finally:
            reports.parser = None
        host = reports.host
        if not reports.complete or reports.declined or host is None:
            # No Host: an HTTP/1.1 request without one is refused on aiohttp's side.
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
        return RequestHead(
            method.decode("ascii"),
            target.decode("latin-1"),
            block,
            reports.keep_alive,
            host,
            reports.authorization,
            reports.connection,
            reports.request_id,
            reports.traceparent,
            tuple(reports.cut),
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
    *,
    framing: Framing,
    close: bool,
    clean: Callable[[list[tuple[str, str]]], list[tuple[str, str]]],
) -> bytes:
    """The client's response head from the upstream's `head` (whole, as received).

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
    fields = clean(parse_fields(fields_of(head)))
    return response_head(status, reason, fields, framing=framing, close=close)


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
