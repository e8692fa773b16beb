"""The field table (`principal.FIELDS`): every place a Principal travels follows it, and
the bytes of the fields the spec fixes are the bytes they were before the table.

The round trips below build a Principal with every field of the table set, whatever the
table holds: a field added to it is carried (headers, CONNECT, the cache's records, the
shared level's values) without a test edit here, and a field the spec or the shipped nginx
example does not name fails here."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from proxy.auth.cache.entries import PackedTable, Positive
from proxy.auth.shared import codec
from proxy.core.principal import ANONYMOUS, FIELDS, Principal
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
    assert NAMES.render_block(dataclasses.replace(principal)) == block
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
    assert [f.name for f in FIELDS] == [f.name for f in dataclasses.fields(Principal)]
    headers = [f.header for f in FIELDS if f.header is not None]
    connects = [f.connect for f in FIELDS if f.connect is not None]
    assert len(set(headers)) == len(headers) and len(set(connects)) == len(connects)
    with pytest.raises(TypeError):
        Principal("machine", "mch_1")  # type: ignore[misc]  # keyword-only: nothing swaps unseen


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
            assert not dataclasses.replace(p, **{f.name: "a b"}).header_safe(), f.name


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
