"""Header rewriting, pure: headers in, headers out."""

from __future__ import annotations

import gc
import ipaddress

import pytest
from multidict import CIMultiDict

from proxy.core.principal import ANONYMOUS, Principal
from proxy.http import headers as headers_module
from proxy.http.headers import (
    RECENT_OBJECTS,
    ClientHop,
    PrincipalHeaders,
    client_ip,
    connection_tokens,
    for_client,
    upstream_items,
)

NAMES = PrincipalHeaders.for_prefix("X-Auth-")
HOP = ClientHop(peer_ip="198.51.100.9", scheme="https", host="api.example")
MACHINE = Principal(
    type="machine", id="mch_1", token_type="m2m_token", token_id="mt_1",
    scopes=frozenset({"b", "a"}), claims_json='{"k":"v"}',
)
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def up(headers: list[tuple[str, str]], principal: Principal = MACHINE, *, hop: ClientHop = HOP,
       trusted: tuple[ipaddress.IPv4Network, ...] = (), fwd_auth: bool = False) -> list[tuple[str, str]]:
    return upstream_items(headers, principal=principal, names=NAMES, hop=hop, trusted=trusted,
                          forward_authorization=fwd_auth)


def names_of(items: list[tuple[str, str]]) -> list[str]:
    return [k.lower() for k, _ in items]


@pytest.mark.parametrize(
    "spoof",
    [
        ("X-Auth-Principal-Id", "mch_evil"),
        ("x-auth-principal-id", "mch_evil"),
        ("X_Auth_Principal_Id", "mch_evil"),
        ("x_auth-principal_type", "machine"),
        ("X-AUTH-SCOPES", "scores:admin"),
        ("X-Auth-Anything-Else", "1"),
    ],
)
def test_client_identity_headers_never_survive(spoof: tuple[str, str]) -> None:
    out = up([spoof, spoof, ("Accept", "*/*")])
    assert ("mch_evil" not in [v for _, v in out])
    assert [v for k, v in out if k.lower() == "x-auth-principal-id"] == ["mch_1"]
    assert [v for k, v in out if k.lower() == "x-auth-scopes"] == ["a b"]
    assert not any(k.lower().replace("_", "-").startswith("x-auth-anything") for k, _ in out)


def test_connection_cannot_remove_injected_headers() -> None:
    out = up([("Connection", "X-Auth-Principal-Id, close"), ("X-Auth-Principal-Id", "evil")])
    assert [v for k, v in out if k.lower() == "x-auth-principal-id"] == ["mch_1"]
    assert "connection" not in names_of(out)


def test_principal_headers_exact() -> None:
    out = dict(up([]))
    assert out["X-Auth-Principal-Type"] == "machine"
    assert out["X-Auth-Principal-Id"] == "mch_1"
    assert out["X-Auth-Token-Type"] == "m2m_token"
    assert out["X-Auth-Token-Id"] == "mt_1"
    assert out["X-Auth-Scopes"] == "a b"
    assert out["X-Auth-Claims"] == '{"k":"v"}'


def test_anonymous_gets_only_the_type() -> None:
    out = [(k, v) for k, v in up([], ANONYMOUS) if k.lower().startswith("x-auth-")]
    assert out == [("X-Auth-Principal-Type", "anonymous")]


def test_custom_prefix_strips_and_injects_its_own() -> None:
    names = PrincipalHeaders.for_prefix("X-Scores-Auth-")
    out = CIMultiDict(upstream_items([("x_scores_auth_principal_id", "evil")], principal=MACHINE,
                                     names=names, hop=HOP, trusted=(), forward_authorization=False))
    assert out.getall("X-Scores-Auth-Principal-Id") == ["mch_1"]


@pytest.mark.parametrize(
    ("header", "dropped"),
    [
        (("Connection", "keep-alive"), True),
        (("Keep-Alive", "timeout=5"), True),
        (("Proxy-Connection", "keep-alive"), True),
        (("Proxy-Authorization", "Basic x"), True),
        (("TE", "trailers"), True),
        (("Trailer", "X"), True),
        (("Transfer-Encoding", "chunked"), True),
        (("Upgrade", "h2c"), True),
        (("X-HTTP-Method-Override", "DELETE"), True),
        (("X-HTTP-Method", "DELETE"), True),
        (("X-Method-Override", "DELETE"), True),
        (("Authorization", "Bearer t"), True),
        (("Cookie", "a=b"), False),
        (("Content-Type", "application/json"), False),
    ],
)
def test_hop_by_hop_and_override_headers(header: tuple[str, str], dropped: bool) -> None:
    out = names_of(up([header]))
    assert (header[0].lower() not in out) is dropped


def test_authorization_forwarded_only_when_configured() -> None:
    assert dict(up([("Authorization", "Bearer t")], fwd_auth=True))["Authorization"] == "Bearer t"


def test_forwarded_headers_from_untrusted_peer_are_replaced() -> None:
    out = up([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "http"),
              ("X-Forwarded-Host", "evil"), ("Forwarded", "for=1.2.3.4"), ("X-Real-IP", "1.2.3.4")])
    d = CIMultiDict(out)
    assert d.getall("X-Forwarded-For") == ["198.51.100.9"]
    assert d["X-Forwarded-Proto"] == "https"
    assert d["X-Forwarded-Host"] == "api.example"
    assert "Forwarded" not in d and "X-Real-IP" not in d


def test_forwarded_headers_from_trusted_proxy_are_extended() -> None:
    hop = ClientHop("10.1.2.3", "http", "inner")
    out = CIMultiDict(up([("X-Forwarded-For", "1.2.3.4, 5.6.7.8"), ("X-Forwarded-Proto", "https"),
                          ("X-Forwarded-Host", "api.example")], hop=hop, trusted=TRUSTED))
    assert out.getall("X-Forwarded-For") == ["1.2.3.4, 5.6.7.8, 10.1.2.3"]
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "api.example"


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("198.51.100.9", ["1.2.3.4"], "198.51.100.9"),  # untrusted peer: XFF ignored
        ("10.0.0.1", ["1.2.3.4"], "1.2.3.4"),
        ("10.0.0.1", ["1.2.3.4, 10.0.0.2"], "1.2.3.4"),  # skip trusted hops from the right
        ("10.0.0.1", ["6.6.6.6, 1.2.3.4"], "1.2.3.4"),  # the client cannot pick its own IP
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["10.0.0.3"], "10.0.0.3"),
    ],
)
def test_client_ip(peer: str, xff: list[str], expected: str) -> None:
    assert client_ip(ClientHop(peer, "http", None), xff, TRUSTED) == expected


def test_connection_tokens() -> None:
    assert connection_tokens(["keep-alive, X-Foo", " x-bar ,,", ""]) == {"keep-alive", "x-foo", "x-bar"}


def test_for_client_drops_hop_by_hop_and_named() -> None:
    out = for_client([("Connection", "X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "t"),
                      ("Transfer-Encoding", "chunked"), ("Content-Length", "10"),
                      ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert list(out.items()) == [("Content-Length", "10"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]


@pytest.mark.parametrize(
    ("incoming", "host"),
    [
        ([("Host", "api.example")], ["api.example"]),
        ([("host", "api.example")], ["api.example"]),
        ([], ["127.0.0.1:9000"]),  # no Host from the client: the upstream's authority
        # `Connection` cannot name Host away (issue 17, row 10).
        ([("Host", "api.example"), ("Connection", "host")], ["api.example"]),
    ],
)
def test_default_host_only_when_the_client_sent_none(
    incoming: list[tuple[str, str]], host: list[str]
) -> None:
    out = upstream_items(incoming, principal=MACHINE, names=NAMES, hop=HOP, trusted=(),
                         forward_authorization=False, default_host="127.0.0.1:9000")
    assert [v for k, v in out if k.lower() == "host"] == host


def test_rendering_is_memoised_per_principal_object_and_never_confused() -> None:
    names = PrincipalHeaders.for_prefix("X-Auth-")
    first = names.render(MACHINE)
    assert names.render(MACHINE) is first
    other = MACHINE.replace(id="mch_2")
    assert dict(names.render(other))["X-Auth-Principal-Id"] == "mch_2"
    assert dict(names.render(MACHINE))["X-Auth-Principal-Id"] == "mch_1"


def test_equal_principals_render_alike_and_copies_are_not_hoarded() -> None:
    """Every re-verification of a token builds a new, equal Principal: each renders the
    same, and the memo keeps at most RECENT_OBJECTS of the copies (issue 19's creep: one
    entry per copy, until 4,096)."""
    names = PrincipalHeaders.for_prefix("X-Auth-")
    first = names.render(MACHINE)
    copies = [MACHINE.replace() for _ in range(3 * RECENT_OBJECTS)]
    assert all(names.render(copy) == first for copy in copies)
    assert len(names._recent) <= RECENT_OBJECTS
    kept = gc.get_referrers(copies[0])
    assert not any(isinstance(k, tuple) and k and k[0] is copies[0] for k in kept)


@pytest.mark.parametrize(
    ("block", "cut", "out"),
    [
        (b"\r\nA: 1\r\nB: 2\r\nC: 3", (b"B",), b"\r\nA: 1\r\nC: 3"),
        (b"\r\nA: 1\r\nB: 2\r\nC: 3", (b"A", b"B"), b"\r\nC: 3"),  # one after another
        (b"\r\nA: 1\r\nB: 2\r\nC: 3", (b"B", b"C"), b"\r\nA: 1"),  # the last ones
        (b"\r\nA: 1\r\nB: 2\r\nC: 3", (b"A", b"B", b"C"), b""),
        (b"\r\nA: 1\r\nB:\r\nB: 2 \r\nC: 3", (b"B", b"B"), b"\r\nA: 1\r\nC: 3"),  # empty, spaced
        (b"\r\nAB: 1\r\nB: 2", (b"B",), b"\r\nAB: 1"),  # a name is matched whole
    ],
)
def test_cut_takes_each_field_from_its_crlf_to_the_next(
    block: bytes, cut: tuple[bytes, ...], out: bytes
) -> None:
    assert headers_module._cut(block, cut, None, "x-auth-") == out
