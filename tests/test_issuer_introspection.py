"""Opaque tokens of another issuer, verified by RFC 7662 introspection at the issuer
emulator, through the same cache, single-flight, budget and stale-if-error as Clerk's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from proxy.auth.issuers.introspection import judge_answer
from proxy.config.load import build_config
from proxy.core.errors import ProxyError
from proxy.emulator.issuer_state import OPAQUE_PREFIX
from tests.support import header_values
from tests.support_issuers import API, IssuerStack, authgear_entry, issuer_stack, token_for

__all__ = ["issuer_stack"]


def introspecting(method: str = "client_secret_basic", prefix: str = OPAQUE_PREFIX) -> Any:
    def entry(url: str) -> dict[str, Any]:
        return {
            **authgear_entry(url),
            "introspection": {
                "client_id": "scores-api",
                "client_secret": "rs-secret",
                "auth_method": method,
                "token_prefix": prefix,
            },
        }

    return {"authgear": entry}


async def opaque_token(s: IssuerStack, client_id: str = "svc-o") -> str:
    emu = s.issuers["authgear"]
    emu.add_client("scores-api", resources={}, client_secret="rs-secret")  # the API itself
    client = emu.add_client(client_id, resources={API: ("scores:read",)}, token_format="opaque")
    token = await token_for(s.client, emu.issuer, client.client_id, client.client_secret)
    assert token.startswith(OPAQUE_PREFIX)
    return token


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_an_opaque_token_is_introspected_once(issuer_stack: Any, method: str) -> None:
    s: IssuerStack = await issuer_stack(introspecting(method))
    token = await opaque_token(s)
    for _ in range(3):
        assert (await s.get("/api/v1/matches", token))[0] == 200
    seen = s.recorder.last.headers
    assert header_values(seen, "X-Auth-Principal-Type") == ["machine"]
    assert header_values(seen, "X-Auth-Principal-Id") == ["svc-o"]
    assert header_values(seen, "X-Auth-Issuer") == ["authgear"]
    assert header_values(seen, "X-Auth-Scopes") == ["scores:read"]
    assert s.issuers["authgear"].calls["introspect"] == 1  # then the cache


async def test_concurrent_misses_share_one_introspection(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack(introspecting())
    token = await opaque_token(s)
    s.issuers["authgear"].set_fault("slow", seconds=0.2, endpoints=["introspect"])
    answers = await asyncio.gather(*(s.get("/api/v1/matches", token) for _ in range(20)))
    assert {a[0] for a in answers} == {200}
    assert s.issuers["authgear"].calls["introspect"] == 1


async def test_inactive_tokens_are_refused_and_negative_cached(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack(introspecting())
    token = await opaque_token(s)
    emu = s.issuers["authgear"]
    emu.revoke(token)
    for _ in range(3):
        status, _, body = await s.get("/api/v1/matches", token)
        assert (status, body["error"]["code"]) == (401, "token_invalid")
        assert "not active" in body["error"]["message"]
    assert emu.calls["introspect"] == 1
    made_up = OPAQUE_PREFIX + "x" * 43
    assert (await s.get("/api/v1/matches", made_up))[0] == 401


async def test_issuer_down_is_503_and_stale_entries_carry_on(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack(
        introspecting(), cache={"ttl_seconds": 0.2, "stale_if_error_seconds": 60}
    )
    token = await opaque_token(s)
    fresh = await opaque_token(s, "svc-fresh")
    assert (await s.get("/api/v1/matches", token))[0] == 200
    emu = s.issuers["authgear"]
    emu.set_fault("error", status=502, endpoints=["introspect"])
    await asyncio.sleep(0.25)
    assert (await s.get("/api/v1/matches", token))[0] == 200  # stale, served
    assert "authproxy_verify_cache_total{result=\"stale\"}" in s.metrics()
    status, headers, body = await s.get("/api/v1/matches", fresh)  # never seen: no stale
    assert (status, body["error"]["code"]) == (503, "verification_unavailable")
    assert "Retry-After" in headers


async def test_wrong_introspection_credentials_are_ours(issuer_stack: Any, caplog: Any) -> None:
    s: IssuerStack = await issuer_stack(introspecting())
    token = await opaque_token(s)
    s.issuers["authgear"].clients["scores-api"].client_secret = "rotated"
    with caplog.at_level(logging.ERROR, logger="proxy.introspection"):
        status, headers, body = await s.get("/api/v1/matches", token)
    assert (status, body["error"]["code"], headers["Retry-After"]) == (
        503,
        "verification_unavailable",
        "30",
    )
    assert "refused the proxy's introspection credentials" in caplog.text
    assert token not in caplog.text


async def test_introspection_spends_the_budget(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack(
        introspecting(), verification_budget={"per_ip": {"rate": 0.01, "burst": 2}}
    )
    emu = s.issuers["authgear"]
    tokens = [await opaque_token(s, f"svc-{i}") for i in range(3)]
    codes = [(await s.get("/api/v1/matches", t))[2].get("error", {}).get("code") for t in tokens]
    assert codes == [None, None, "verification_budget_exceeded"]
    assert emu.calls["introspect"] == 2


async def test_only_prefixed_tokens_reach_the_issuer(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack(introspecting(prefix="emu_at_"))
    await opaque_token(s)
    for token in ("mt_" + "a" * 40, "something-else-entirely-0123456789", "x.y.z"):
        assert (await s.get("/api/v1/matches", token))[0] == 401
    assert s.issuers["authgear"].calls["introspect"] == 0


API_CFG = build_config(
    {
        "upstream": {"url": "http://127.0.0.1:1"},
        "clerk": {"api_url": "http://127.0.0.1:1", "secret_key": "sk_test_x"},
        "issuers": [
            {"name": "it", "preset": "authgear", "issuer": "https://id.example", "audiences": [API]}
        ],
    },
    file="t",
).issuers[0]


@pytest.mark.parametrize(
    ("status", "body", "code", "why"),
    [
        (200, b'{"active": false}', "token_invalid", "not active"),
        (200, b'{"active": true, "exp": 50, "client_id": "a", "sub": "client_id_a"}', "token_expired", "expired"),
        (200, b'{"active": true, "iss": "https://other.example", "client_id": "a"}', "token_invalid", "not issued by"),
        (200, b'{"active": true, "aud": "https://other.example", "client_id": "a"}', "token_invalid", "another API"),
        (200, b'{"active": "yes"}', "verification_unavailable", "unreadable"),
        (200, b"[]", "verification_unavailable", "unreadable"),
        (200, b'{"active": true, "exp": "soon"}', "verification_unavailable", "unreadable"),
        # One claims check with the issuer's JWTs (jws.check_claims), present-only:
        (200, b'{"active": true, "nbf": 2000, "client_id": "a"}', "token_invalid", "not valid yet"),
        (200, b'{"active": true, "iat": 2000, "client_id": "a"}', "token_invalid", "in the future"),
        (200, b'{"active": true, "aud": [], "client_id": "a"}', "token_invalid", "no audience"),
        (200, b'{"active": true, "iat": true}', "verification_unavailable", "unreadable"),
        (200, b'{"active": true, "aud": {"a": 1}}', "verification_unavailable", "unreadable"),
        (401, b"{}", "verification_unavailable", "cannot verify"),
        (500, b"{}", "verification_unavailable", "HTTP 500"),
        (429, b"{}", "verification_unavailable", "HTTP 429"),
    ],
)
def test_judge_answer(status: int, body: bytes, code: str, why: str) -> None:
    with pytest.raises(ProxyError) as info:
        judge_answer(API_CFG, status, {}, body, 1000.0)
    assert (info.value.code, why in info.value.message) == (code, True), info.value.message


def test_an_answer_needs_no_claim_but_active() -> None:
    """RFC 7662: every member but `active` is optional; a JWT without `exp` is refused."""
    principal = judge_answer(API_CFG, 200, {}, b'{"active": true, "client_id": "a"}', 1000.0)
    assert (principal.id, principal.expires_at) == ("a", None)


def test_judge_answer_maps_like_a_jwt() -> None:
    body = b'{"active": true, "iss": "https://id.example", "aud": ["https://api.scores.example"], "exp": 2000, "client_id": "svc", "sub": "client_id_svc", "scope": "a b", "jti": "j"}'
    principal = judge_answer(API_CFG, 200, {}, body, 1000.0)
    assert (principal.type, principal.id, principal.issuer, principal.token_id) == ("machine", "svc", "it", "j")
    assert principal.scopes == frozenset({"a", "b"}) and principal.expires_at == 2000.0
