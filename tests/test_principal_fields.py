"""The field table (`principal.FIELDS`): every place a Principal travels follows it, and
the bytes of the fields the spec fixes are the bytes they were before the table.

The round trips below build a Principal with every field of the table set, whatever the
table holds: a field added to it is carried (headers, CONNECT, the cache's records, the
shared level's values) without a test edit here, and a field the spec or the shipped nginx
example does not name fails here."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

import proxy
from proxy.auth.cache.entries import PackedTable, Positive
from proxy.auth.shared import codec
from proxy.core import principal as principal_module
from proxy.core.principal import ANONYMOUS, FIELDS, Field, Principal, agrees, visible_ascii
from proxy.http.headers import PrincipalHeaders
from proxy.realtime.socketio import principal_auth

ROOT = Path(__file__).resolve().parent.parent
NAMES = PrincipalHeaders.for_prefix("X-Auth-")

CLERK_OAUTH = Principal(
    type="oauth", id="user_1", token_type="oauth_token", token_id="oat_1",
    scopes=frozenset({"write", "read"}), claims_json='{"k":"v"}', expires_at=1.9e9, client_id="cl_1",
)
ISSUER_MACHINE = Principal(
    type="machine", id="svc-a", token_type="m2m_token", token_id="j1", scopes=frozenset({"scores:read"}),
    expires_at=2000.0, client_id="svc-a", issuer="authgear",
)
SESSION = Principal(type="user", id="user_2", token_type="session_token", token_id="sess_2")

# Written by the hand-rolled renderers the table replaced (commit e43e6af), byte for byte.
BEFORE_THE_TABLE = [
    (
        CLERK_OAUTH,
        b'\r\nX-Auth-Principal-Type: oauth\r\nX-Auth-Principal-Id: user_1\r\nX-Auth-Token-Type: oauth_token'
        b'\r\nX-Auth-Token-Id: oat_1\r\nX-Auth-Scopes: read write\r\nX-Auth-Claims: {"k":"v"}',
        '{"type":"oauth","id":"user_1","token_type":"oauth_token","token_id":"oat_1",'
        '"scopes":["read","write"],"claims":{"k":"v"}}',
    ),
    (
        ISSUER_MACHINE,
        b"\r\nX-Auth-Principal-Type: machine\r\nX-Auth-Principal-Id: svc-a\r\nX-Auth-Token-Type: m2m_token"
        b"\r\nX-Auth-Token-Id: j1\r\nX-Auth-Scopes: scores:read\r\nX-Auth-Issuer: authgear",
        '{"type":"machine","id":"svc-a","token_type":"m2m_token","token_id":"j1","scopes":["scores:read"],'
        '"claims":{},"issuer":"authgear"}',
    ),
    (
        SESSION,
        b"\r\nX-Auth-Principal-Type: user\r\nX-Auth-Principal-Id: user_2\r\nX-Auth-Token-Type: session_token"
        b"\r\nX-Auth-Token-Id: sess_2",
        '{"type":"user","id":"user_2","token_type":"session_token","token_id":"sess_2","scopes":[],"claims":{}}',
    ),
    (
        Principal(type="user"),
        b"\r\nX-Auth-Principal-Type: user",
        '{"type":"user","id":null,"token_type":null,"token_id":null,"scopes":[],"claims":{}}',
    ),
    (ANONYMOUS, b"\r\nX-Auth-Principal-Type: anonymous", '{"type":"anonymous"}'),
]


def connect_json(principal: Principal) -> str:
    return json.dumps(principal_auth(principal), separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@pytest.mark.parametrize(("principal", "block", "connect"), BEFORE_THE_TABLE)
def test_headers_and_connect_keep_their_bytes(principal: Principal, block: bytes, connect: str) -> None:
    assert NAMES.render_block(principal.replace()) == block
    assert connect_json(principal) == connect


def every_field() -> Principal:
    """Every field of the table set to a value of its kind, distinct per field."""
    by_kind: dict[str, object] = {
        "principal_type": "oauth",
        "token_type": "oauth_token",
        "scopes": frozenset({"s_2", "s_1"}),
        "claims": '{"c":1}',
        "time": 1_900_000_000.25,
    }
    return Principal(**{f.name: by_kind.get(f.kind, f"{f.name}_v") for f in FIELDS})  # type: ignore[arg-type]


def test_the_table_is_principals_attributes_in_order() -> None:
    assert agrees(Principal, FIELDS)
    assert agrees(Principal, FIELDS[::-1])  # FIELDS' order is the bytes'; the class's is free
    headers = [f.header for f in FIELDS if f.header is not None]
    connects = [f.connect for f in FIELDS if f.connect is not None]
    assert len(set(headers)) == len(headers) and len(set(connects)) == len(connects)
    with pytest.raises(TypeError):
        Principal("machine", "mch_1")  # type: ignore[misc]  # keyword-only: nothing swaps unseen


def test_the_check_refuses_a_class_and_table_that_disagree() -> None:
    names = [f.name for f in FIELDS]
    assert not agrees(Principal, FIELDS[:-1])  # a field the table lacks
    assert not agrees(Principal, (*FIELDS, Field("unheard_of", "text", "Unheard-Of")))  # one the class lacks

    def made(init: str, stored: list[str]) -> type:
        body = "".join(f"        self.{n} = {n}\n" for n in stored) or "        pass\n"
        scope: dict[str, object] = {}
        exec(f"class Made:\n    __slots__ = {tuple(names)!r}\n    def __init__(self, {init}):\n{body}", scope)
        return scope["Made"]  # type: ignore[return-value]

    keyword = "*, type, " + ", ".join(f"{n}=None" for n in names[1:])
    assert agrees(made(keyword, names), FIELDS)  # the helper itself builds an agreeing class
    assert not agrees(made(keyword, names[:-1]), FIELDS)  # takes every field, stores one less
    assert not agrees(made(keyword.replace("*, ", ""), names), FIELDS)  # positional


def test_the_import_fails_when_they_disagree() -> None:
    source = (ROOT / "proxy" / "core" / "principal.py").read_text()
    rows = re.findall(r"^    Field\(.*\),\n", source, re.M)
    assert len(rows) == len(FIELDS)

    def run(text: str) -> None:
        name = "principal_under_test"
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))  # type: ignore[arg-type]
        sys.modules[name] = module  # dataclasses read their module while they build
        try:
            exec(compile(text, name, "exec"), module.__dict__)
        finally:
            del sys.modules[name]

    run(source)  # as it is, it loads
    with pytest.raises(ImportError, match="FIELDS and Principal's attributes disagree"):
        run(source.replace(rows[-1], "", 1))
    with pytest.raises(ImportError, match="FIELDS and Principal's attributes disagree"):
        run(source.replace(rows[-1], rows[-1] + '    Field("unheard_of", "text", "Unheard-Of", "unheard_of"),\n', 1))


def test_a_principal_is_equal_hashed_shown_and_copied_by_its_fields() -> None:
    p = every_field()
    same = p.replace()
    assert same == p and same is not p and hash(same) == hash(p) and len({p, same}) == 1
    for f in FIELDS:
        assert p.replace(**{f.name: getattr(ANONYMOUS, f.name)}) != p, f.name
    assert p != "machine" and p.__eq__(object()) is NotImplemented
    assert repr(p) == "Principal(" + ", ".join(f"{f.name}={getattr(p, f.name)!r}" for f in FIELDS) + ")"
    later = p.replace(expires_at=None)
    assert later.expires_at is None and p.expires_at == 1_900_000_000.25
    with pytest.raises(TypeError):
        p.replace(unheard_of="t")


@pytest.mark.skipif(not proxy.compiled(), reason="pure Python: `Final` is mypy's check alone")
def test_a_principal_cannot_be_changed() -> None:
    """One principal is shared by cache entries and requests: compiled, its attributes are
    read-only (`Final`), by whatever route a change is tried."""
    assert type(principal_module).__name__ == "module" and principal_module.__file__.endswith(".so")
    p = every_field()
    for f in FIELDS:
        value = getattr(p, f.name)
        with pytest.raises(AttributeError):
            setattr(p, f.name, value)
        with pytest.raises(AttributeError):
            object.__setattr__(p, f.name, value)
        with pytest.raises(AttributeError):
            delattr(p, f.name)
    with pytest.raises(AttributeError):
        p.unheard_of = "t"  # type: ignore[attr-defined]
    assert p == every_field()


def test_every_sent_field_is_rendered_and_every_other_is_not() -> None:
    p = every_field()
    rendered = dict(NAMES.render(p))
    auth = principal_auth(p)
    for f in FIELDS:
        value = getattr(p, f.name)
        text = " ".join(sorted(value)) if f.kind == "scopes" else value
        if f.header is None:
            assert not any(v == text for v in rendered.values()), f.name
        else:
            assert rendered.pop("X-Auth-" + f.header) == text, f.name
        if f.connect is not None:
            expected = sorted(value) if f.kind == "scopes" else json.loads(value) if f.kind == "claims" else value
            assert auth.pop(f.connect) == expected, f.name
    assert rendered == {} and auth == {}
    assert p.header_safe()
    for f in FIELDS:
        if f.kind == "text":
            assert not p.replace(**{f.name: "a b"}).header_safe(), f.name


def test_visible_ascii_is_the_expression_it_replaced() -> None:
    expression = re.compile(r"[!-~]+")
    for code in range(0x110000):
        c = chr(code)
        assert visible_ascii(c) == bool(expression.fullmatch(c)), hex(code)
    for text in ("", " ", "a b", "ab", "a\tb", "a\x7f", "a\r\nX-Auth-Principal-Id: admin", "~!", "é", "a\ud800"):
        assert visible_ascii(text) == bool(expression.fullmatch(text)), text


def test_every_field_survives_the_cache_and_the_shared_level() -> None:
    p = every_field()
    entry = Positive(principal=p, fresh_until=1.0, keep_until=2.0)
    table = PackedTable()
    table[bytes(16)] = entry
    table._recent.clear()  # read the record back, not the built copy
    assert table.get(bytes(16)) == entry
    mac = codec.mac_key("sk_test_fields", b"scope")
    assert codec.decode(bytes(16), codec.encode(bytes(16), entry, mac), mac) == entry


def test_the_spec_and_the_nginx_example_name_every_header() -> None:
    """A header the proxy sends that docs/spec.md does not list, or that the shipped
    forward-auth example would not pass on from the answer to the upstream."""
    spec = (ROOT / "docs" / "spec.md").read_text()
    nginx = (ROOT / "deploy" / "nginx" / "forward-auth.conf").read_text()
    for f in FIELDS:
        if f.header is None:
            continue
        name = "X-Auth-" + f.header
        assert f"| `{name}` |" in spec, name
        variable = "$upstream_http_" + name.lower().replace("-", "_")
        passed = re.search(rf"auth_request_set \$(\w+) +{re.escape(variable)};", nginx)
        assert passed is not None, name
        assert re.search(rf"proxy_set_header {name} +\${passed.group(1)};", nginx), name
