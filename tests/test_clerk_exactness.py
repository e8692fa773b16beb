# ruff: noqa: F811 (tests take the imported `stack_factory` fixture as a parameter)
"""Issue 16's table, row by row, through the real proxy: crafted JWTs signed with the
emulated instance's own key, which the proxy used to accept and Clerk's JS SDK refuses
(tests/test_clerk_differential.py holds the same judgement against the SDK itself)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.emulator.state import M2M_JWT_CAT, SESSION_JWT_CAT
from tests.support import header_values
from tests.test_auth_e2e import ROUTES, Stack, stack_factory  # noqa: F401 (a fixture)

TEMPLATE_CAT = "cl_B7d4PD222AAA"
APP = "https://app.example"
WITH_OPTIONAL = [*ROUTES, {"name": "optional", "path": "/optional/**", "auth": "optional"}]


def session_claims(s: Stack, **over: Any) -> dict[str, Any]:
    now = int(s.emulator.now())
    claims = {
        "iss": s.emulator.issuer,
        "sub": "user_2abc",
        "sid": "sess_2abc",
        "azp": APP,
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "v": 2,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("header", "over", "code"),
    [
        ({"cat": SESSION_JWT_CAT}, {"sts": "pending"}, "token_invalid"),
        ({"cat": SESSION_JWT_CAT}, {"azp": None}, "token_invalid"),
        ({"cat": SESSION_JWT_CAT}, {"sub": None}, "token_invalid"),
        ({"typ": "foo"}, {}, "token_type_mismatch"),
        ({"cat": TEMPLATE_CAT}, {}, "token_type_mismatch"),
        (
            {"cat": SESSION_JWT_CAT},
            {"sub": "mch_2partner0000000000000000000"},
            "token_type_mismatch",
        ),
        ({"cat": M2M_JWT_CAT}, {}, "token_type_mismatch"),
    ],
    ids=[
        "sts-pending",
        "no-azp-with-authorized-parties",
        "no-sub",
        "typ-foo",
        "jwt-template",
        "mch-sub-with-session-cat",
        "m2m-cat-with-user-sub",
    ],
)
async def test_issue_table_refusals(
    stack_factory: Any, header: dict[str, Any], over: dict[str, Any], code: str
) -> None:
    s: Stack = await stack_factory(clerk={"authorized_parties": [APP]}, routes=WITH_OPTIONAL)
    good = s.emulator.mint_jwt(session_claims(s), {"cat": SESSION_JWT_CAT})
    assert (await s.get("/api/v1/matches", good))[0] == 200
    token = s.emulator.mint_jwt(session_claims(s, **over), header)
    status, headers, body = await s.get("/api/v1/matches", token)
    assert (status, body["error"]["code"]) == (401, code), body
    assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    # On an optional route the same token is no principal at all: forwarded anonymous.
    assert (await s.get("/optional/x", token))[0] == 200
    assert header_values(s.recorder.last.headers, "X-Auth-Principal-Type") == ["anonymous"]


async def test_a_pending_session_is_anonymous_where_auth_is_optional(stack_factory: Any) -> None:
    s: Stack = await stack_factory(routes=WITH_OPTIONAL)
    pending = s.emulator.mint_session_jwt("user_2abc", extra={"sts": "pending"})
    assert (await s.get("/api/v1/matches", pending))[0] == 401
    assert (await s.get("/optional/x", pending))[0] == 200
    assert header_values(s.recorder.last.headers, "X-Auth-Principal-Type") == ["anonymous"]
    active = s.emulator.mint_session_jwt("user_2abc", extra={"sts": "active"})
    assert (await s.get("/api/v1/matches", active))[0] == 200


async def test_a_partner_minted_m2m_jwt_cannot_grant_itself_a_scope(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    partner = s.emulator.create_machine("partner")
    # What a partner can ask Clerk for: any custom claims at creation (token_format: jwt).
    token = s.emulator.mint_m2m_jwt(
        partner.id, claims={"scopes": "scores:admin", "aud": ["scores:admin"], "tier": "gold"}
    )
    status, headers, body = await s.get("/api/v1/admin/reset", token)
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    assert 'scope="scores:admin"' in headers["WWW-Authenticate"]
    # The token is still a valid machine principal where no scope is asked; what it chose
    # for itself travels as claims, never as scopes.
    assert (await s.get("/api/v1/matches/today", token))[0] == 200
    seen = s.recorder.last.headers
    assert header_values(seen, "X-Auth-Principal-Id") == [partner.id]
    assert header_values(seen, "X-Auth-Scopes") in ([], [""])
    assert header_values(seen, "X-Auth-Claims") == [
        '{"aud":["scores:admin"],"scopes":"scores:admin","tier":"gold"}'
    ]


async def test_scp_is_read_before_scope(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    now = int(s.emulator.now())
    oauth = s.emulator.mint_jwt(
        {
            "iss": s.emulator.issuer,
            "sub": "user_2abc",
            "client_id": "client_1",
            "jti": "oat_" + "0" * 32,
            "scp": ["scores:read"],
            "scope": "scores:admin",
            "iat": now,
            "exp": now + 60,
        },
        {"typ": "at+jwt"},
    )
    status, _, body = await s.get("/api/v1/admin/reset", oauth)
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    assert (await s.get("/api/v1/matches", oauth))[0] == 200
    assert header_values(s.recorder.last.headers, "X-Auth-Scopes") == ["scores:read"]
