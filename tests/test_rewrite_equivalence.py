"""The fast path rewrites raw field blocks (`http1`, `headers.UpstreamRewrite`); aiohttp's
side rewrites (name, value) pairs (`headers.upstream_items`, `headers.client_items`).
Both must give the same fields for any input: generated heads, every spelling that
matters (case, `_` for `-`, Connection naming fields, forwarding fields from trusted and
untrusted peers), compared field by field as the upstream or client would parse them."""

from __future__ import annotations

import ipaddress
import os

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.core.principal import ANONYMOUS, Principal
from proxy.http import http1
from proxy.http.headers import (
    ClientHop,
    PrincipalHeaders,
    UpstreamRewrite,
    client_items,
    upstream_items,
)

MACHINE = Principal(
    type="machine", id="mch_1", token_type="m2m_token", token_id="mt_1",
    scopes=frozenset({"b", "a"}), claims_json='{"k":"v"}',
)
# A session: no scopes, so no scopes field (both rewrites).
SESSION = Principal(type="user", id="user_1", token_type="session_token", token_id="sess_1")
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)

# Names that the rewrites treat specially, and some that only look alike.
SPECIAL = [
    "Host", "Authorization", "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
    "Upgrade-Insecure-Requests", "Proxy-Authorization", "Proxy-Authenticate",
    "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "Forwarded",
    "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP",
    "X-Auth-Principal-Id", "X-Auth-Scopes", "x-auth-", "X-Authorization", "X-Auth", "Auth",
    "X-Scores-Auth-Principal-Type", "Accept", "User-Agent", "Cookie", "TEX", "X-TE",
    # Heads with these are aiohttp's; only their `_` spellings reach the block rewrite.
    "Content_Length", "Transfer_Encoding", "HTTP2_Settings", "Content_Lengthy",
    # The parser picks these out of the pass that finds what to cut (a request-id name the
    # identity prefix covers is cut as well as picked).
    "X-Request-Id", "Traceparent", "Trace-Id", "X-Auth-Request",
]
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~"


@st.composite
def field_names(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        name = draw(st.sampled_from(SPECIAL))
        # Random case, and `_` for `-` (an identity field must be caught in any spelling).
        name = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)
        return "".join("_" if c == "-" and draw(st.booleans()) else c for c in name)
    return draw(st.text(TOKEN_CHARS, min_size=1, max_size=12))


@st.composite
def connection_values(draw: st.DrawFn) -> str:
    names = draw(st.lists(field_names(), max_size=3))
    extra = draw(st.lists(st.sampled_from(["close", "keep-alive", "Keep-Alive", " ", ""]), max_size=2))
    return ",".join(draw(st.permutations([*names, *extra])))


values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                 max_size=20)


@st.composite
def fields(draw: st.DrawFn) -> list[tuple[str, str]]:
    out = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(field_names())
        value = draw(connection_values()) if name.lower() == "connection" else draw(values)
        out.append((name, value))
    return out


def block_of(pairs: list[tuple[str, str]], spacing: str) -> bytes:
    return "".join(f"\r\n{name}:{spacing}{value}" for name, value in pairs).encode("latin-1")


def as_parsed(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What a parser reads back: values without leading whitespace."""
    return [(str(name), value.lstrip(" \t")) for name, value in pairs]


@settings(max_examples=int(os.environ.get("EQUIVALENCE_EXAMPLES", "400")), deadline=None)
@given(
    pairs=fields(),
    spacing=st.sampled_from(["", " ", "  ", "\t"]),
    principal=st.sampled_from([MACHINE, SESSION, ANONYMOUS]),
    peer=st.sampled_from(["10.1.2.3", "198.51.100.9"]),
    host=st.sampled_from([None, "api.example", "h:8080"]),
    trusted=st.sampled_from([(), TRUSTED]),
    forward_authorization=st.booleans(),
    prefix=st.sampled_from(["X-Auth-", "X-Scores-Auth-", "x_auth_"]),
    default_host=st.sampled_from([None, "127.0.0.1:3000"]),
    # A head read by another config's pass (a reload between parse and rewrite).
    read_by_rewrite=st.booleans(),
    # Names the parser also picks, and one an identity prefix covers.
    request_id=st.sampled_from(["X-Request-Id", "X-Auth-Request", "Trace-Id"]),
)
def test_block_rewrite_is_upstream_items(
    pairs: list[tuple[str, str]], spacing: str, principal: Principal, peer: str,
    host: str | None, trusted: tuple[ipaddress.IPv4Network, ...], forward_authorization: bool,
    prefix: str, default_host: str | None, read_by_rewrite: bool, request_id: str,
) -> None:
    names = PrincipalHeaders.for_prefix(prefix)
    hop = ClientHop(peer, "http", host)
    # A head the fast path takes has one Host: the parser's pass, which lists the fields
    # the rewrite may cut, is the rewrite's other half.
    hosts = [n for n, _ in pairs if n.lower() == "host"]
    assume(len(hosts) <= 1)
    # Framing fields as spelt make a head aiohttp's (random names can spell one).
    assume(not {n.lower() for n, _ in pairs} & {"content-length", "transfer-encoding",
                                               "upgrade", "expect", "http2-settings"})
    if not hosts:
        pairs = [*pairs, ("Host", "h")]
    block = block_of(pairs, spacing)
    parsed = http1.parse_fields(block)
    assert parsed == as_parsed(pairs)
    expected = upstream_items(
        parsed, principal=principal, names=names, hop=hop, trusted=trusted,
        forward_authorization=forward_authorization, default_host=default_host,
    )
    rewrite = UpstreamRewrite(
        names, trusted=trusted, forward_authorization=forward_authorization,
        request_id=request_id,
    )
    head = http1.HeadParser().parse(
        b"GET / HTTP/1.1" + block + http1.HEAD_END,
        rewrite.picked if read_by_rewrite else http1.DEFAULT_FIELDS,
    )
    assert head is not None and head.block == block, pairs
    out = rewrite.block(head, principal=principal, hop=hop, default_host=default_host)
    assert http1.parse_fields(out) == as_parsed(expected)


@settings(max_examples=int(os.environ.get("EQUIVALENCE_EXAMPLES", "400")), deadline=None)
@given(
    pairs=fields(),
    spacing=st.sampled_from(["", " ", "  "]),
    status=st.sampled_from([200, 201, 204, 304, 404, 500]),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    reason=st.sampled_from(["OK", "", "Not Found"]),
    sized=st.booleans(),
    close=st.booleans(),
)
def test_client_head_is_client_items(
    pairs: list[tuple[str, str]], spacing: str, status: int, version: str, reason: str,
    sized: bool, close: bool,
) -> None:
    # Framing fields are the parser's business (llhttp refuses conflicting ones); the
    # generated heads carry at most a Content-Length.
    pairs = [(n, v) for n, v in pairs if n.lower() not in ("content-length", "transfer-encoding")]
    if sized:
        pairs.append(("Content-Length", "2"))
    line = f"{version} {status} {reason}" if reason else f"{version} {status}"
    head = line.encode() + block_of(pairs, spacing) + b"\r\n\r\n"
    block = http1.fields_of(head)
    framing = http1.response_framing(status, block)
    out = http1.client_head(status, head, framing=framing, close=close, clean=client_items)
    expected = http1.response_head(
        status, reason, client_items(http1.parse_fields(block)), framing=framing, close=close
    )
    # The status line is rebuilt, or passed on exactly as the upstream wrote it.
    out_line = out[: out.index(b"\r\n")]
    assert out_line in (expected[: expected.index(b"\r\n")], head[: head.index(b"\r\n")])
    assert out_line.startswith(b"HTTP/1.1 %d " % status)
    assert http1.parse_fields(http1.fields_of(out)) == http1.parse_fields(http1.fields_of(expected))
