"""The pure Socket.IO codec and CONNECT rewriter: bytes in, bytes out."""

from __future__ import annotations

import json

import pytest
from engineio import packet as eio_packet
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from socketio import packet as sio_packet

from proxy.core.errors import (
    TOKEN_INVALID,
    VERIFICATION_BUDGET_EXCEEDED,
    VERIFICATION_UNAVAILABLE,
    ProxyError,
)
from proxy.core.principal import ANONYMOUS, Principal
from proxy.realtime import socketio

MACHINE = Principal(
    type="machine",
    id="mch_partner",
    token_type="m2m_token",
    token_id="mt_0123456789abcdef0123456789abcdef",
    scopes=frozenset({"scores:read", "a:b"}),
    claims_json='{"tier":"gold"}',
)
USER = Principal(type="user", id="user_1", token_type="session_token", token_id="sess_1")

MACHINE_AUTH = {
    "type": "machine",
    "id": "mch_partner",
    "token_type": "m2m_token",
    "token_id": "mt_0123456789abcdef0123456789abcdef",
    "scopes": ["a:b", "scores:read"],
    "claims": {"tier": "gold"},
}
ANON_AUTH = {"type": "anonymous"}
# Anonymous because its token was refused: the code the REST answer would have had.
REFUSED_AUTH = {"type": "anonymous", "refusal": "token_invalid"}


class Verifier:
    def __init__(self, principals: dict[str, Principal] | None = None, error: str = TOKEN_INVALID):
        self.principals = principals or {"good": MACHINE}
        self.error = error
        self.calls: list[str] = []

    async def __call__(self, token: str) -> Principal:
        self.calls.append(token)
        try:
            return self.principals[token]
        except KeyError:
            raise ProxyError(self.error, "nope") from None


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --- queries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "EIO=4&transport=polling",
        "EIO=4&transport=polling&t=Nx1&sid=abc",
        "EIO=4&transport=websocket",
        "EIO=4&transport=polling&b64=1",
    ],
)
def test_query_accepted(query: str) -> None:
    socketio.check_query(query)


@pytest.mark.parametrize(
    "query",
    [
        "EIO=3&transport=polling",
        "transport=polling",
        "EIO=4&EIO=4&transport=polling",
        "EIO=4&transport=polling&j=0",
        "EIO=4&transport=webtransport",
        "EIO=4",
        "EIO=4&transport=polling&sid=a&sid=b",
    ],
)
def test_query_refused(query: str) -> None:
    with pytest.raises(ProxyError) as info:
        socketio.check_query(query)
    assert info.value.status == 400


def test_sid_of() -> None:
    assert socketio.sid_of("EIO=4&transport=websocket&sid=Ab-1") == "Ab-1"
    assert socketio.sid_of("EIO=4&transport=websocket") is None


# --- CONNECT rewriting ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        ('40{"token":"good"}', "40" + dumps({"principal": MACHINE_AUTH})),
        ('40/admin,{"token":"good"}', "40/admin," + dumps({"principal": MACHINE_AUTH})),
        # pid/offset (connection state recovery) and other keys kept, in order
        (
            '40{"pid":"p1","token":"good","offset":"o9","x":[1,{"y":null}]}',
            "40"
            + dumps(
                {"pid": "p1", "offset": "o9", "x": [1, {"y": None}], "principal": MACHINE_AUTH}
            ),
        ),
        # a forged principal is dropped, whatever its shape
        (
            '40{"token":"good","principal":{"type":"user","id":"user_admin"}}',
            "40" + dumps({"principal": MACHINE_AUTH}),
        ),
        ('40{"token":"bad","principal":"admin"}', "40" + dumps({"principal": REFUSED_AUTH})),
        # no token: the header principal (here anonymous)
        ("40", "40" + dumps({"principal": ANON_AUTH})),
        ("40/admin,", "40/admin," + dumps({"principal": ANON_AUTH})),
        ("40/admin", "40/admin," + dumps({"principal": ANON_AUTH})),
        ('40{"token":null}', "40" + dumps({"principal": ANON_AUTH})),
        # a token that is not a string is an invalid token, never verified
        ('40{"token":42}', "40" + dumps({"principal": REFUSED_AUTH})),
        # an id field and a query on the namespace stay verbatim
        ('40/admin?x=1,{"token":"good"}', "40/admin?x=1," + dumps({"principal": MACHINE_AUTH})),
        ('40/chat,7{"a":1}', "40/chat,7" + dumps({"a": 1, "principal": ANON_AUTH})),
        # non-ASCII is escaped on the way out (no lone surrogate can break the frame)
        (
            '40{"name":"Zoë \\ud800"}',
            "40" + '{"name":"Zo\\u00eb \\ud800","principal":{"type":"anonymous"}}',
        ),
    ],
)
async def test_rewrite_connect(packet: str, expected: str) -> None:
    out, _ = await socketio.rewrite_connect(
        packet, header_principal=ANONYMOUS, header_token=None, verify=Verifier()
    )
    assert out == expected
    assert "good" not in out.replace('"token_type"', "")


async def test_header_principal_used_without_auth_token() -> None:
    verify = Verifier()
    out, grant = await socketio.rewrite_connect(
        '40{"pid":"x"}', header_principal=USER, header_token="hdr", verify=verify
    )
    assert json.loads(out[2:])["principal"]["id"] == "user_1"
    assert grant.principal == USER and grant.token == "hdr"
    assert verify.calls == []


async def test_same_token_in_header_and_auth_is_fine() -> None:
    _, grant = await socketio.rewrite_connect(
        '40{"token":"good"}', header_principal=MACHINE, header_token="good", verify=Verifier()
    )
    assert grant.principal == MACHINE


async def test_two_different_tokens_refused() -> None:
    with pytest.raises(ProxyError) as info:
        await socketio.rewrite_connect(
            '40{"token":"good"}', header_principal=USER, header_token="other", verify=Verifier()
        )
    assert info.value.status == 400
    assert "good" not in str(info.value) and "other" not in str(info.value)


@pytest.mark.parametrize("code", [VERIFICATION_UNAVAILABLE, VERIFICATION_BUDGET_EXCEEDED])
async def test_unavailable_verifier_is_not_a_downgrade(code: str) -> None:
    with pytest.raises(ProxyError) as info:
        await socketio.rewrite_connect(
            '40{"token":"x"}',
            header_principal=ANONYMOUS,
            header_token=None,
            verify=Verifier(error=code),
        )
    assert info.value.code == code


@pytest.mark.parametrize(
    "packet",
    [
        "40[1]",
        '40"tok"',
        "40null",
        '40{"token":"good"',
        '40{"token":"good"}x',
        '40,{"token":"good"}',
        '402-{"token":"good"}',
        '40\u0663{"token":"good"}',
        '40{"a":NaN}',
        '40{"a":Infinity}',
        "40" + "[" * 100_000 + "]" * 100_000,
    ],
)
async def test_garbage_connect_refused(packet: str) -> None:
    with pytest.raises(ProxyError) as info:
        await socketio.rewrite_connect(
            packet, header_principal=ANONYMOUS, header_token=None, verify=Verifier()
        )
    assert info.value.status == 400


# --- polling bodies ------------------------------------------------------------------

PASSTHROUGH = [
    b"2",
    b"3probe",
    b'42["hello",{"x":1}]',
    b'42/admin,5["ack-me"]',
    b'451-["file",{"_placeholder":true,"num":0}]\x1ebAQID',
    b'452-/admin,["two",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]\x1ebAA==\x1eb//8=',
    b"41",
    b"41/admin,",
    b'43/admin,5["done"]',
    '42["unicod\u00e9 \U0001f600"]'.encode(),
    b"b" + b"NDA=",  # the base64 of "40" as a binary attachment: not a CONNECT
]


@pytest.mark.parametrize("body", PASSTHROUGH)
async def test_polling_non_connect_untouched(body: bytes) -> None:
    verify = Verifier()
    out, grants = await socketio.rewrite_polling_grants(
        body, header_principal=MACHINE, verify=verify
    )
    assert out is body  # not even copied
    assert grants == [] and verify.calls == []


async def test_polling_body_with_several_packets() -> None:
    body = b"\x1e".join(
        [
            b'42["before"]',
            b'40{"token":"good","pid":"p"}',
            b'451-["bin",{"_placeholder":true,"num":0}]',
            b"bAQIDBA==",
            b'40/admin,{"token":"bad","principal":{"type":"user"}}',
            b"40/public,",
            b'42/admin,["after"]',
        ]
    )
    out, grants = await socketio.rewrite_polling_grants(
        body, header_principal=USER, verify=Verifier()
    )
    packets = out.split(b"\x1e")
    assert packets[0] == b'42["before"]'
    assert packets[1] == ("40" + dumps({"pid": "p", "principal": MACHINE_AUTH})).encode()
    assert packets[2] == b'451-["bin",{"_placeholder":true,"num":0}]'
    assert packets[3] == b"bAQIDBA=="
    assert packets[4] == ("40/admin," + dumps({"principal": REFUSED_AUTH})).encode()
    assert (
        packets[5]
        == b"40/public,"
        + json.dumps(
            {
                "principal": {
                    "type": "user",
                    "id": "user_1",
                    "token_type": "session_token",
                    "token_id": "sess_1",
                    "scopes": [],
                    "claims": {},
                }
            },
            separators=(",", ":"),
        ).encode()
    )
    assert packets[6] == b'42/admin,["after"]'
    assert [g.principal for g in grants] == [MACHINE, ANONYMOUS, USER]


async def test_polling_grants_keep_namespace_and_token() -> None:
    body = b'40/admin?v=2,{"token":"good"}\x1e40'
    _, grants = await socketio.rewrite_polling_grants(
        body, header_principal=ANONYMOUS, verify=Verifier()
    )
    assert [(g.namespace, g.principal, g.token) for g in grants] == [
        ("/admin", MACHINE, "good"),
        ("/", ANONYMOUS, None),
    ]
    assert "good" not in repr(grants)


async def test_polling_connect_not_utf8_refused() -> None:
    with pytest.raises(ProxyError):
        await socketio.rewrite_polling_grants(
            b'42["x"]\x1e40{"a":"\xff"}', header_principal=ANONYMOUS, verify=Verifier()
        )


# --- small helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "namespace"),
    [
        ("41", "/"),
        ("41/admin,", "/admin"),
        ('44/admin,{"message":"x"}', "/admin"),
        ('44{"message":"x"}', "/"),
        ('452-/admin,["x"]', "/admin"),
        ("41/admin?x=1,", "/admin"),
    ],
)
def test_namespace_of(packet: str, namespace: str) -> None:
    assert socketio.namespace_of(packet) == namespace


@pytest.mark.parametrize(
    ("packet", "count"),
    [
        ('451-["x"]', 1),
        ('4512-/a,["x"]', 12),
        ('46/a,3-["x"]', 0),
        ('42["x"]', 0),
        ("45", 0),
        ('45\u00b2-["x"]', 0),
    ],
)
def test_binary_attachments(packet: str, count: int) -> None:
    assert socketio.binary_attachments(packet) == count


def test_control_packets() -> None:
    assert socketio.disconnect_packet("/") == "41"
    assert socketio.disconnect_packet("/admin") == "41/admin,"
    assert (
        socketio.connect_error_packet("/a", "m", {"code": "c"})
        == '44/a,{"message":"m","data":{"code":"c"}}'
    )


# --- when a live grant must be looked at again (fake clock) ---------------------------


@pytest.mark.parametrize(
    ("grant", "reverify", "due"),
    [
        (socketio.Grant("/", ANONYMOUS), 60.0, None),  # anonymous: nothing to watch
        (socketio.Grant("/", MACHINE), 60.0, None),  # no expiry, no token to re-verify
        (socketio.Grant("/", MACHINE, "tok"), 60.0, 1060.0),
        (socketio.Grant("/", MACHINE, "tok"), 0.0, None),
        (socketio.Grant("/", MACHINE.replace(expires_at=1030.0), "tok"), 60.0, 1030.0),
        (socketio.Grant("/", MACHINE.replace(expires_at=1090.0), "tok"), 60.0, 1060.0),
        (socketio.Grant("/", MACHINE.replace(expires_at=1090.0)), 60.0, 1090.0),
    ],
)
def test_watch_due(grant: socketio.Grant, reverify: float, due: float | None) -> None:
    watch = socketio.watch_for(grant, 1000.0, reverify)
    assert (watch.due if watch else None) == due


def test_same_identity_ignores_expiry_only() -> None:
    later = MACHINE.replace(expires_at=5.0)
    assert socketio.same_identity(MACHINE, later)
    assert not socketio.same_identity(MACHINE, MACHINE.replace(scopes=frozenset()))


def test_grant_book_hands_grants_over_once() -> None:
    book = socketio.GrantBook(ttl=60)
    book.remember("sid1", [socketio.Grant("/", MACHINE, "tok")])
    book.remember("sid1", [socketio.Grant("/live", USER)])
    assert [g.namespace for g in book.take("sid1")] == ["/", "/live"]
    assert book.take("sid1") == [] and book.take(None) == []


class _Verify:
    def __init__(self, outcome: Principal | ProxyError) -> None:
        self.outcome = outcome
        self.calls = 0

    async def __call__(self, token: str) -> Principal:
        self.calls += 1
        if isinstance(self.outcome, ProxyError):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(
    ("principal", "token", "now", "outcome", "ended", "calls"),
    [
        pytest.param(MACHINE.replace(expires_at=100.0), None, 99.0, MACHINE, [], 0, id="not-yet-expired"),
        pytest.param(MACHINE.replace(expires_at=100.0), None, 100.0, MACHINE, ["/"], 0, id="expired"),
        pytest.param(ANONYMOUS, None, 10_000.0, MACHINE, [], 0, id="anonymous-never-ends"),
        pytest.param(MACHINE, "tok", 61.0, MACHINE, [], 1, id="reverified-ok"),
        pytest.param(MACHINE, "tok", 61.0, ProxyError(TOKEN_INVALID, "revoked"), ["/"], 1, id="revoked"),
        pytest.param(MACHINE, "tok", 61.0, ProxyError(VERIFICATION_UNAVAILABLE, "down"), [], 1, id="clerk-down-keeps"),
        pytest.param(MACHINE, "tok", 30.0, ProxyError(TOKEN_INVALID, "revoked"), [], 0, id="not-due-yet"),
        pytest.param(MACHINE, None, 61.0, ProxyError(TOKEN_INVALID, "x"), [], 0, id="header-grant-no-token"),
    ],
)
async def test_grant_book_sweeps_polling_sessions(
    principal: Principal, token: str | None, now: float, outcome: Principal | ProxyError,
    ended: list[str], calls: int,
) -> None:
    book = socketio.GrantBook(ttl=3600)
    book.remember("sid1", [socketio.Grant("/", principal, token)])
    verify = _Verify(outcome)
    assert await book.sweep("sid1", 0.0, reverify_seconds=60, verify=verify) == []  # starts the clock
    assert await book.sweep("sid1", now, reverify_seconds=60, verify=verify) == ended
    assert verify.calls == calls
    # An ended namespace is gone; a kept one is still handed to the upgrade.
    assert [g.namespace for g in book.take("sid1")] == ([] if ended else ["/"])


async def test_grant_book_sweep_of_unknown_session() -> None:
    book = socketio.GrantBook(ttl=60)
    assert await book.sweep(None, 1.0, reverify_seconds=60, verify=_Verify(MACHINE)) == []
    assert await book.sweep("nope", 1.0, reverify_seconds=60, verify=_Verify(MACHINE)) == []


# --- python-socketio's own parser as the oracle ----------------------------------------
# The upstream reads what the proxy relays with these very parsers (python-engineio's
# Packet, then python-socketio's): where our codec accepts a packet, it must read the
# namespace, id and payload they read, and what it writes must read back as it meant.

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
AUTH_OBJECTS = st.dictionaries(
    st.sampled_from(["token", "principal", "pid", "offset"]) | st.text(max_size=4),
    st.text(max_size=8) | JSON_VALUES,
    max_size=4,
)
NAMESPACES = st.just("") | st.from_regex(r"/[A-Za-z0-9_/.\-]{0,8}(\?[a-z0-9=&]{0,6})?", fullmatch=True)
IDS = st.just("") | st.from_regex(r"[0-9]{1,4}", fullmatch=True)
PAYLOADS = st.just("") | AUTH_OBJECTS.map(dumps) | JSON_VALUES.map(dumps)
# Anything a client can type after a packet type, from the characters that mean something.
JUNK = st.text(alphabet='0123456789/,-?{}[]":a ', max_size=14)


def _packet(kind: str) -> st.SearchStrategy[str]:
    """Engine.IO MESSAGE + one Socket.IO packet of `kind`: [n-][/nsp[?q],][id][json]."""
    attachments = st.just("") | st.from_regex(r"[0-9]{1,2}-", fullmatch=True)
    structured = st.builds(
        lambda n, ns, sep, i, p: "4" + kind + n + ns + sep + i + p,
        attachments if kind in "56" else st.just(""),
        NAMESPACES,
        st.sampled_from(["", ","]),
        IDS,
        PAYLOADS,
    )
    return structured | JUNK.map(lambda rest: "4" + kind + rest)


def oracle(text: str) -> sio_packet.Packet | None:
    """python-socketio's reading of one Engine.IO text packet; None where it refuses it."""
    try:
        eio = eio_packet.Packet(encoded_packet=text)
        if eio.packet_type != eio_packet.MESSAGE or not isinstance(eio.data, str):
            return None
        return sio_packet.Packet(encoded_packet=eio.data)
    except (ValueError, IndexError, TypeError, RecursionError):
        return None


@settings(max_examples=400, deadline=None)
@given(_packet("0"))
def test_connect_is_read_as_python_socketio_reads_it(packet: str) -> None:
    theirs = oracle(packet)
    try:
        ours = socketio.parse_connect(packet)
    except ProxyError as error:  # refused: stricter is allowed, never a different reading
        assert error.status == 400
        return
    assert theirs is not None and theirs.packet_type == sio_packet.CONNECT, packet
    assert ours.namespace == (theirs.namespace or "/")
    data = theirs.data or {}
    assert ours.auth == {k: v for k, v in data.items() if k not in ("token", "principal")}
    assert (ours.token, ours.token_malformed) == (
        (data.get("token"), False) if data.get("token") is None or isinstance(data.get("token"), str)
        else (None, True)
    )
    # What the upstream gets instead: the same namespace and id, the auth plus the principal.
    written = oracle(socketio.encode_connect(ours, MACHINE))
    assert written is not None and written.packet_type == sio_packet.CONNECT
    assert (written.namespace or "/", written.id) == (ours.namespace, theirs.id)
    assert written.data == {**ours.auth, "principal": MACHINE_AUTH}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from("123456").flatmap(_packet))
def test_namespace_and_attachments_are_read_as_python_socketio_reads_them(packet: str) -> None:
    theirs = oracle(packet)
    assume(theirs is not None)
    assert theirs is not None
    assert socketio.namespace_of(packet) == (theirs.namespace or "/"), packet
    if theirs.packet_type in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
        assert socketio.binary_attachments(packet) == theirs.attachment_count, packet


@pytest.mark.parametrize("namespace", ["/", "/admin", "/a/b"])
def test_control_packets_are_read_by_python_socketio(namespace: str) -> None:
    gone = oracle(socketio.disconnect_packet(namespace))
    refused = oracle(socketio.connect_error_packet(namespace, "m", {"code": "c"}))
    assert gone is not None and refused is not None
    assert (gone.packet_type, gone.namespace or "/") == (sio_packet.DISCONNECT, namespace)
    assert (refused.packet_type, refused.namespace or "/", refused.data) == (
        sio_packet.CONNECT_ERROR,
        namespace,
        {"message": "m", "data": {"code": "c"}},
    )


@pytest.mark.parametrize("packet", ["41\u0663-/admin,", '45\u0663-/admin,["x"]'])
def test_non_ascii_digits_python_socketio_would_read_are_refused(packet: str) -> None:
    """The oracle found it: python-socketio reads a non-ASCII decimal digit (str.isdigit,
    int('٣') == 3) as part of an attachment count, socket.io-parser and this codec do
    not; `41٣-/admin,` is python-socketio's DISCONNECT of /admin and ours of /. Such a
    packet is refused by both relays (`ambiguous_prefix`), never read either way."""
    theirs = oracle(packet)
    assert theirs is not None
    assert socketio.namespace_of(packet) != (theirs.namespace or "/") or packet.startswith("45")
    assert socketio.ambiguous_prefix(packet)
    # Latin-1 view of its UTF-8 bytes, as the byte relay reads a frame's first bytes.
    assert socketio.ambiguous_prefix(packet.encode().decode("latin-1"))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from("123456").flatmap(_packet))
def test_packets_read_alike_are_not_refused_as_ambiguous(packet: str) -> None:
    theirs = oracle(packet)
    assume(theirs is not None)
    # More digits than any client library writes after the type is refused on purpose,
    # whoever could read it (below): an id joined to a numeric payload makes such a run.
    run = len(packet[2:]) - len(packet[2:].lstrip("0123456789"))
    assume(run <= socketio.MAX_PREFIX_DIGITS)
    assert not socketio.ambiguous_prefix(packet), packet


@pytest.mark.parametrize("packet", ["4100001000000", "42" + "1" * 11 + '["x"]'])
def test_a_digit_run_longer_than_any_client_writes_is_refused(packet: str) -> None:
    """Found by the property above: `41` + id `0000` + payload `1000000` is eleven digits
    after the type. python-socketio reads it; the byte relay, which reads a packet's
    first 13 bytes, cannot tell where such a run ends, so it is refused, not guessed."""
    assert oracle(packet) is not None
    assert socketio.ambiguous_prefix(packet)
