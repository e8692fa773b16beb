"""The Clerk emulator through a real socket: Clerk's wire contract, key scoping, faults.

A fake clock drives expiry; nothing here sleeps or asserts on timing (the slow fault is
observed as a client timeout of a tenth of the delay).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from proxy.emulator.app import ClerkEmulator, seed_demo, serve
from proxy.emulator.state import M2M_JWT_CAT, SESSION_JWT_CAT

KEY = "sk_test_emulator"
M2M_ID = re.compile(r"mt_[0-9a-f]{32}")
Client = TestClient[Any, Any]


class Clock:
    def __init__(self) -> None:
        self.t = 1_760_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emu(clock: Clock) -> ClerkEmulator:
    return ClerkEmulator(KEY, now=clock)


@pytest.fixture
async def client(emu: ClerkEmulator, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(emu.app)


Call = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
def call(client: Client) -> Call:
    async def call(
        path: str, body: Any = None, *, key: str | None = KEY, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        async with client.post(path, data=data, headers=headers) as resp:
            # Exactly this: Clerk's JS SDK parses a body as JSON on no other value.
            assert resp.headers["Content-Type"] == "application/json"
            return resp.status, await resp.json()

    return call


M2M_FIELDS = {
    "object",
    "id",
    "subject",
    "claims",
    "scopes",
    "revoked",
    "revocation_reason",
    "expired",
    "expiration",
    "last_used_at",
    "created_at",
    "updated_at",
}


@pytest.mark.parametrize("prefix", ["", "/v1"])
async def test_m2m_create_with_the_machine_key(
    emu: ClerkEmulator, call: Call, clock: Clock, prefix: str
) -> None:
    api = emu.create_machine("scores-api")
    partner = emu.create_machine("partner", scoped_machines=[api.id])
    status, body = await call(
        f"{prefix}/m2m_tokens",
        {"seconds_until_expiration": 60, "claims": {"tier": "gold"}},
        key=partner.secret_key,
    )
    assert status == 201  # the spec's answer; clerk-backend-api fails on anything else
    assert set(body) == M2M_FIELDS | {"token"}
    assert M2M_ID.fullmatch(body["id"])
    assert body["token"].startswith("mt_") and not M2M_ID.fullmatch(body["token"])
    assert re.fullmatch(r"mch_[A-Za-z0-9]{27}", body["subject"]) and body["subject"] == partner.id
    assert body["object"] == "machine_to_machine_token"
    assert body["scopes"] == [api.id]
    assert body["claims"] == {"tier": "gold"}
    assert body["created_at"] == int(clock.t * 1000)
    assert body["expiration"] == int(clock.t * 1000) + 60_000
    assert (body["revoked"], body["expired"], body["last_used_at"]) == (False, False, None)
    # The secret works and is never shown again.
    status, verified = await call(f"{prefix}/m2m_tokens/verify", {"token": body["token"]})
    assert status == 200
    assert set(verified) == M2M_FIELDS
    assert verified["id"] == body["id"]


async def test_m2m_create_takes_only_a_machine_key(emu: ClerkEmulator, call: Call) -> None:
    # The spec: "Must be authenticated via a Machine Secret Key"; the body has no field
    # naming a machine (additionalProperties: false).
    partner = emu.create_machine("partner")
    status, body = await call("/v1/m2m_tokens", {})
    assert (status, body["errors"][0]["code"]) == (401, "authentication_invalid")
    status, body = await call(
        "/v1/m2m_tokens", {"machine_secret_key": partner.secret_key}, key=partner.secret_key
    )
    assert (status, body["errors"][0]["code"]) == (400, "form_param_unknown")
    # What Clerk's JS SDK sends when nothing is chosen: nulls, and the default format.
    status, body = await call(
        "/v1/m2m_tokens",
        {"seconds_until_expiration": None, "claims": None, "token_format": "opaque"},
        key=partner.secret_key,
    )
    assert (status, body["subject"], body["expiration"], body["claims"]) == (
        201,
        partner.id,
        None,
        None,
    )


async def test_m2m_create_jwt_format(emu: ClerkEmulator, call: Call, client: Client) -> None:
    api = emu.create_machine("scores-api")
    partner = emu.create_machine("partner", scoped_machines=[api.id])
    status, body = await call(
        "/m2m_tokens",
        {"token_format": "jwt", "seconds_until_expiration": 600, "claims": {"tier": "gold"}},
        key=partner.secret_key,
    )
    assert status == 201
    token = body["token"]
    assert jwt.get_unverified_header(token)["cat"] == M2M_JWT_CAT
    claims = await verify_with_jwks(client, token, emu.now())
    # Clerk sets iss, sub, exp, nbf, iat, jti; the creator's claims come beside them, and
    # no `scopes` claim of the emulator's own.
    assert claims == {
        "tier": "gold",
        "iss": emu.issuer,
        "sub": partner.id,
        "jti": body["id"],
        "iat": int(emu.now()),
        "nbf": int(emu.now()),
        "exp": int(emu.now()) + 600,
    }
    assert body["scopes"] == [api.id] and body["claims"] == {"tier": "gold"}


async def test_m2m_jwt_creator_claims_never_replace_clerks(emu: ClerkEmulator) -> None:
    token = emu.mint_m2m_jwt("mch_2abc", claims={"sub": "mch_evil", "scopes": "x", "aud": ["y"]})
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["scopes"], claims["aud"]) == ("mch_2abc", "x", ["y"])


async def test_m2m_list(emu: ClerkEmulator, client: Client, clock: Clock) -> None:
    api = emu.create_machine("scores-api")
    partner = emu.create_machine("partner", scoped_machines=[api.id])
    other = emu.create_machine("other")
    live = emu.create_m2m_token(partner.id)
    revoked = emu.create_m2m_token(partner.id)
    emu.revoke_m2m_token(revoked.id)
    short = emu.create_m2m_token(partner.id, seconds_until_expiration=10)
    emu.create_m2m_token(other.id)
    clock.t += 11

    async def listed(query: str, key: str = KEY) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {key}"}
        async with client.get(f"/v1/m2m_tokens?{query}", headers=headers) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            return resp.status, await resp.json()

    status, body = await listed(f"subject={partner.id}")
    assert (status, [t["id"] for t in body["m2m_tokens"]], body["total_count"]) == (
        200,
        [live.id],
        1,
    )
    assert set(body["m2m_tokens"][0]) == M2M_FIELDS
    _, body = await listed(f"subject={partner.id}&revoked=true&expired=true")
    assert [t["id"] for t in body["m2m_tokens"]] == [short.id, revoked.id, live.id]  # newest first
    _, body = await listed(f"subject={partner.id}&revoked=true&expired=true&limit=1&offset=1")
    assert ([t["id"] for t in body["m2m_tokens"]], body["total_count"]) == ([revoked.id], 3)
    # A machine key lists its own machine's tokens only.
    assert (await listed(f"subject={partner.id}", partner.secret_key))[0] == 200
    assert (await listed(f"subject={other.id}", partner.secret_key))[0] == 403
    status, body = await listed("")
    assert (status, body["errors"][0]["meta"]) == (400, {"param_name": "subject"})
    assert (await listed(f"subject={partner.id}&limit=500"))[0] == 400


async def test_m2m_create_reuses_a_live_token(emu: ClerkEmulator, call: Call, clock: Clock) -> None:
    partner = emu.create_machine("partner")
    ask = {"seconds_until_expiration": 600, "min_remaining_ttl_seconds": 300}
    _, first = await call("/m2m_tokens", ask, key=partner.secret_key)
    clock.t += 200  # 400 s left: still reusable
    _, again = await call("/m2m_tokens", ask, key=partner.secret_key)
    assert (again["id"], again["token"]) == (first["id"], first["token"])
    clock.t += 200  # 200 s left: a new one
    _, fresh = await call("/m2m_tokens", ask, key=partner.secret_key)
    assert fresh["id"] != first["id"]
    status, body = await call(
        "/m2m_tokens",
        {"seconds_until_expiration": 60, "min_remaining_ttl_seconds": 60},
        key=partner.secret_key,
    )
    assert (status, body["errors"][0]["meta"]) == (400, {"param_name": "min_remaining_ttl_seconds"})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"seconds_until_expiration": "soon"}, "seconds_until_expiration"),
        ({"seconds_until_expiration": -1}, "seconds_until_expiration"),
        ({"claims": ["not", "an", "object"]}, "claims"),
        ({"token_format": "paseto"}, "token_format"),
    ],
)
async def test_m2m_create_refuses_bad_params(
    emu: ClerkEmulator, call: Call, body: dict[str, Any], param: str
) -> None:
    partner = emu.create_machine("partner")
    status, answer = await call("/m2m_tokens", body, key=partner.secret_key)
    assert status == 400
    assert answer["errors"][0]["code"] == "form_param_format_invalid"
    assert answer["errors"][0]["meta"] == {"param_name": param}


@pytest.mark.parametrize("prefix", ["", "/v1"])
async def test_m2m_verify_both_paths(emu: ClerkEmulator, call: Call, prefix: str) -> None:
    issued = emu.create_m2m_token(emu.create_machine("partner").id, claims={"a": 1})
    status, body = await call(f"{prefix}/m2m_tokens/verify", {"token": issued.secret})
    assert status == 200
    assert (body["id"], body["claims"], body["expiration"]) == (issued.id, {"a": 1}, None)
    assert "token" not in body and "secret" not in body


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        # The spec's body is {"token"} only (additionalProperties: false): the `secret`
        # that clerk-backend-api's authenticate_request sends is refused, as by Clerk.
        ("/m2m_tokens/verify", {"secret": "mt_x"}, "secret"),
        ("/m2m_tokens/verify", {"token": "mt_x", "extra": 1}, "extra"),
        ("/api_keys/verify", {"secret": "ak_x", "token": "ak_x"}, "token"),
    ],
)
async def test_verify_refuses_unknown_body_fields(
    call: Call, path: str, body: dict[str, Any], param: str
) -> None:
    status, answer = await call(path, body)
    assert (status, answer["errors"][0]["code"]) == (400, "form_param_unknown")
    assert answer["errors"][0]["meta"] == {"param_name": param}


ENVELOPE = {"message", "long_message", "code"}


@pytest.mark.parametrize(
    ("path", "key", "raw", "status", "code"),
    [
        (
            "/m2m_tokens/verify",
            KEY,
            b'{"token": "mt_unknownunknownunknown"}',
            404,
            "resource_not_found",
        ),
        ("/v1/m2m_tokens/verify", None, b'{"token": "mt_x"}', 401, "authentication_invalid"),
        (
            "/m2m_tokens/verify",
            "sk_test_wrong",
            b'{"token": "mt_x"}',
            401,
            "authentication_invalid",
        ),
        (
            "/m2m_tokens/verify",
            "ak_notamachine",
            b'{"token": "mt_x"}',
            401,
            "machine_secret_key_invalid",
        ),
        ("/m2m_tokens/verify", KEY, b"{not json", 400, "form_param_format_invalid"),
        ("/m2m_tokens/verify", KEY, b"[]", 400, "form_param_format_invalid"),
        ("/m2m_tokens/verify", KEY, b"{}", 400, "form_param_missing"),
        ("/m2m_tokens/verify", KEY, b'{"token": 7}', 400, "form_param_format_invalid"),
        (
            "/oauth_applications/access_tokens/verify",
            KEY,
            b'{"access_token": "oat_x"}',
            404,
            "resource_not_found",
        ),
        (
            "/v1/oauth_applications/access_tokens/verify",
            KEY,
            b'{"token": "oat_x"}',
            400,
            "form_param_missing",
        ),
        ("/api_keys/verify", KEY, b'{"secret": "ak_x"}', 404, "resource_not_found"),
        (
            "/v1/api_keys/verify",
            "sk_live_wrong",
            b'{"secret": "ak_x"}',
            401,
            "authentication_invalid",
        ),
        (
            "/v1/m2m_tokens/mt_00000000000000000000000000000000/revoke",
            KEY,
            b"{}",
            404,
            "resource_not_found",
        ),
        ("/v1/no_such_route", KEY, b"{}", 404, "resource_not_found"),
    ],
)
async def test_error_bodies(
    call: Call, path: str, key: str | None, raw: bytes, status: int, code: str
) -> None:
    got, body = await call(path, key=key, raw=raw)
    assert got == status
    assert set(body) == {"errors", "clerk_trace_id"}
    (error,) = body["errors"]
    assert set(error) >= ENVELOPE and error["code"] == code
    assert isinstance(body["clerk_trace_id"], str) and body["clerk_trace_id"]


async def test_machine_key_sees_only_tokens_scoped_to_its_machine(
    emu: ClerkEmulator, call: Call, clock: Clock
) -> None:
    api = emu.create_machine("scores-api")
    other = emu.create_machine("billing-api")
    partner = emu.create_machine("partner", scoped_machines=[api.id])
    issued = emu.create_m2m_token(partner.id)
    body = {"token": issued.secret}
    assert (await call("/m2m_tokens/verify", body, key=KEY))[0] == 200
    status, answer = await call("/m2m_tokens/verify", body, key=api.secret_key)
    assert status == 200
    used_at = answer["last_used_at"]
    clock.t += 10
    # Not in scopes (even the token's own subject): Clerk says it does not exist.
    for machine in (other, partner):
        status, answer = await call("/m2m_tokens/verify", body, key=machine.secret_key)
        assert (status, answer["errors"][0]["code"]) == (404, "resource_not_found")
    # The hidden attempts did not count as uses.
    status, revoked = await call(f"/m2m_tokens/{issued.id}/revoke", {})
    assert revoked["last_used_at"] == used_at
    # A machine key is no instance key: OAuth, API key and JWKS refuse it.
    oauth = emu.create_oauth_token("user_2abc")
    status, _ = await call(
        "/oauth_applications/access_tokens/verify", {"access_token": oauth}, key=api.secret_key
    )
    assert status == 401


async def test_a_non_ascii_key_is_a_401_not_a_crash(client: Client) -> None:
    headers = {"Authorization": "Bearer sk_test_\u00e9mulator"}
    async with client.post("/m2m_tokens/verify", json={"token": "mt_x"}, headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["errors"][0]["code"] == "authentication_invalid"


async def test_tokens_of_another_instance_are_unknown(emu: ClerkEmulator, call: Call) -> None:
    other = ClerkEmulator(KEY)
    issued = other.create_m2m_token(other.create_machine("partner").id)
    assert (await call("/m2m_tokens/verify", {"token": issued.secret}))[0] == 404
    assert other.kid != emu.kid and other.public_jwk["n"] != emu.public_jwk["n"]


@pytest.mark.parametrize("prefix", ["", "/v1"])
async def test_revoke_then_verify(
    emu: ClerkEmulator, call: Call, clock: Clock, prefix: str
) -> None:
    api = emu.create_machine("scores-api")
    partner = emu.create_machine("partner", scoped_machines=[api.id])
    issued = emu.create_m2m_token(partner.id)
    clock.t += 5
    status, body = await call(
        f"{prefix}/m2m_tokens/{issued.id}/revoke",
        {"revocation_reason": "leaked"},
        key=partner.secret_key,
    )
    assert (status, body["revoked"], body["revocation_reason"]) == (200, True, "leaked")
    assert body["updated_at"] == body["created_at"] + 5000
    # Revoked is a 200 that says so: the caller must treat it as a rejection.
    status, body = await call(f"{prefix}/m2m_tokens/verify", {"token": issued.secret})
    assert (status, body["revoked"], body["revocation_reason"]) == (200, True, "leaked")


async def test_revoke_from_python_and_by_a_stranger(emu: ClerkEmulator, call: Call) -> None:
    partner = emu.create_machine("partner")
    stranger = emu.create_machine("stranger")
    issued = emu.create_m2m_token(partner.id)
    status, _ = await call(f"/m2m_tokens/{issued.id}/revoke", {}, key=stranger.secret_key)
    assert status == 404
    emu.revoke_m2m_token(issued.id)
    status, body = await call("/m2m_tokens/verify", {"token": issued.secret})
    assert (status, body["revoked"], body["revocation_reason"]) == (200, True, None)


async def test_expiry_follows_the_injected_clock(
    emu: ClerkEmulator, call: Call, clock: Clock
) -> None:
    issued = emu.create_m2m_token(emu.create_machine("partner").id, seconds_until_expiration=30)
    assert issued.expiration_ms == int(clock.t * 1000) + 30_000
    status, body = await call("/m2m_tokens/verify", {"token": issued.secret})
    assert (status, body["expired"], body["last_used_at"]) == (200, False, int(clock.t * 1000))
    clock.t += 30
    status, body = await call("/m2m_tokens/verify", {"token": issued.secret})
    assert (status, body["expired"], body["expiration"]) == (200, True, issued.expiration_ms)
    assert body["last_used_at"] == int((clock.t - 30) * 1000)  # a refused use is no use


async def test_oauth_verify_body(emu: ClerkEmulator, call: Call, clock: Clock) -> None:
    token = emu.create_oauth_token("user_2abc", scopes=("profile", "email"), client_id="cl_1")
    assert token.startswith("oat_")
    status, body = await call("/oauth_applications/access_tokens/verify", {"access_token": token})
    assert status == 200
    # The spec's OAuth answer has neither claims nor last_used_at, and 32-hex ids.
    assert set(body) == M2M_FIELDS - {"claims", "last_used_at"} | {"client_id"}
    assert re.fullmatch(r"oat_[0-9a-f]{32}", body["id"])
    assert (body["object"], body["subject"], body["client_id"]) == (
        "clerk_idp_oauth_access_token",
        "user_2abc",
        "cl_1",
    )
    assert body["scopes"] == ["profile", "email"]
    assert body["expiration"] == int(clock.t * 1000) + 3_600_000
    # The deprecated `secret` field the spec still lists, and other fields, are taken.
    status, again = await call(
        "/oauth_applications/access_tokens/verify", {"secret": token, "client_hint": 1}
    )
    assert (status, again["id"]) == (200, body["id"])


async def test_oauth_verify_of_a_jwt_access_token(
    emu: ClerkEmulator, call: Call, clock: Clock
) -> None:
    token = emu.mint_oauth_jwt("user_2abc", scopes=("profile",), client_id="cl_1", expires_in=60)
    path = "/oauth_applications/access_tokens/verify"
    status, body = await call(path, {"access_token": token})
    assert (status, body["subject"], body["client_id"], body["scopes"]) == (
        200,
        "user_2abc",
        "cl_1",
        ["profile"],
    )
    clock.t += 61
    # Expired: the spec's second answer, and nothing else in it.
    assert await call(path, {"access_token": token}) == (200, {"active": False})
    foreign = ClerkEmulator(KEY, now=clock).mint_oauth_jwt("user_2abc")
    assert (await call(path, {"access_token": foreign}))[0] == 404


@pytest.mark.parametrize("subject", ["user_2abc", "org_2abc", "mch_2abc"])
async def test_api_key_verify_body(emu: ClerkEmulator, call: Call, subject: str) -> None:
    secret = emu.create_api_key(subject, scopes=("scores:read",), claims={"plan": "pro"})
    assert secret.startswith("ak_")
    status, body = await call("/v1/api_keys/verify", {"secret": secret})
    assert status == 200
    assert set(body) == M2M_FIELDS | {"type", "name", "description", "created_by"}
    assert re.fullmatch(r"ak_[0-9a-f]{32}", body["id"])
    assert (body["object"], body["type"], body["subject"]) == ("api_key", "api_key", subject)
    assert (body["scopes"], body["claims"]) == (["scores:read"], {"plan": "pro"})
    assert body["created_by"] == (subject if subject.startswith("user_") else None)


async def test_a_token_of_one_kind_is_unknown_to_the_other_endpoints(
    emu: ClerkEmulator, call: Call
) -> None:
    oauth = emu.create_oauth_token()
    key = emu.create_api_key("user_2abc")
    assert (await call("/m2m_tokens/verify", {"token": oauth}))[0] == 404
    assert (await call("/api_keys/verify", {"secret": oauth}))[0] == 404
    assert (await call("/oauth_applications/access_tokens/verify", {"access_token": key}))[0] == 404


async def verify_with_jwks(client: Client, token: str, now: float) -> dict[str, Any]:
    async with client.get("/v1/jwks", headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 200
        (jwk,) = (await resp.json())["keys"]
    assert {k: jwk[k] for k in ("kty", "use", "alg")} == {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
    }
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    key = jwt.PyJWK.from_dict(jwk)
    # The fake clock is in the past; check exp/nbf against it, not the wall clock.
    leeway = max(0.0, time.time() - now) + 5
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], leeway=leeway)
    assert now - 5 <= claims["iat"] <= now + 5
    return claims


async def test_jwks_verifies_minted_jwts(emu: ClerkEmulator, client: Client, clock: Clock) -> None:
    session = emu.mint_session_jwt("user_2abc", sid="sess_1", org_id="org_9", extra={"role": "x"})
    claims = await verify_with_jwks(client, session, clock.t)
    assert {k: claims[k] for k in ("sub", "sid", "iss", "v", "role")} == {
        "sub": "user_2abc",
        "sid": "sess_1",
        "iss": emu.issuer,
        "v": 2,
        "role": "x",
    }
    assert claims["exp"] - claims["iat"] == 60 and claims["o"]["id"] == "org_9"
    assert "azp" in claims
    assert jwt.get_unverified_header(session)["cat"] == SESSION_JWT_CAT
    m2m = emu.mint_m2m_jwt("mch_2abc", claims={"region": "eu"})
    assert jwt.get_unverified_header(m2m)["cat"] == M2M_JWT_CAT
    claims = await verify_with_jwks(client, m2m, clock.t)
    assert (claims["sub"], claims["region"]) == ("mch_2abc", "eu")
    assert set(claims) == {"iss", "sub", "exp", "nbf", "iat", "jti", "region"}
    assert M2M_ID.fullmatch(claims["jti"])
    oauth = emu.mint_oauth_jwt("user_2abc", scopes=("profile",), client_id="cl_1")
    assert jwt.get_unverified_header(oauth)["typ"] == "at+jwt"
    claims = await verify_with_jwks(client, oauth, clock.t)
    assert (claims["client_id"], claims["scope"]) == ("cl_1", "profile")
    # Another instance signs with another key: its JWT fails against this JWKS.
    foreign = ClerkEmulator(KEY).mint_jwt(claims, {"kid": emu.kid})
    with pytest.raises(jwt.InvalidSignatureError):
        await verify_with_jwks(client, foreign, clock.t)


async def test_jwks_needs_the_instance_key(emu: ClerkEmulator, client: Client) -> None:
    machine = emu.create_machine("m")
    for key in ("sk_test_wrong", machine.secret_key):
        async with client.get("/jwks", headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 401


@pytest.mark.parametrize(
    ("kind", "params", "status", "retry_after"),
    [
        ("error", {}, 500, None),
        ("error", {"status": 503}, 503, None),
        ("rate_limit", {"retry_after": 7}, 429, "7"),
        ("unauthorized", {}, 401, None),
    ],
)
async def test_answer_faults(
    emu: ClerkEmulator,
    client: Client,
    kind: str,
    params: dict[str, Any],
    status: int,
    retry_after: str | None,
) -> None:
    issued = emu.create_m2m_token(emu.create_machine("partner").id)
    emu.set_fault(kind, **params)
    auth = {"Authorization": f"Bearer {KEY}"}
    for path in ("/m2m_tokens/verify", "/v1/api_keys/verify"):
        async with client.post(path, json={"token": issued.secret}, headers=auth) as resp:
            assert resp.status == status
            assert resp.headers.get("Retry-After") == retry_after
            assert (await resp.json())["errors"][0]["code"]
    # JWKS is spared unless asked for.
    async with client.get("/v1/jwks", headers=auth) as resp:
        assert resp.status == 200
    emu.set_fault(kind, jwks=True, **params)
    async with client.get("/v1/jwks", headers=auth) as resp:
        assert resp.status == status
    emu.clear_faults()
    async with client.post(
        "/m2m_tokens/verify", json={"token": issued.secret}, headers=auth
    ) as resp:
        assert resp.status == 200


async def test_down_drops_the_connection(emu: ClerkEmulator, client: Client) -> None:
    emu.set_fault("down")
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.post("/m2m_tokens/verify", json={"token": "mt_x"}) as resp:
            await resp.read()
    assert emu.calls["m2m_verify"] == 1


async def test_slow_delays_the_answer(emu: ClerkEmulator, client: Client) -> None:
    emu.set_fault("slow", seconds=2.0)
    with pytest.raises(asyncio.TimeoutError):
        async with client.post(
            "/m2m_tokens/verify",
            json={"token": "mt_x"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ) as resp:
            await resp.read()
    # A slow fault still answers, here with the 401 for the missing key.
    emu.set_fault("slow", seconds=0.01)
    async with client.post("/m2m_tokens/verify", json={"token": "mt_x"}) as resp:
        assert resp.status == 401


async def test_fault_times_counts_down(emu: ClerkEmulator, call: Call) -> None:
    emu.set_fault("error", status=502, times=2)
    codes = [(await call("/m2m_tokens/verify", {"token": "mt_x"}))[0] for _ in range(3)]
    assert codes == [502, 502, 404]
    assert emu.faults == {}


@pytest.mark.parametrize(
    ("kind", "params", "why"),
    [
        ("flaky", {}, "unknown fault"),
        ("error", {"status": 404}, "5xx"),
        ("slow", {"delay": 1}, "unknown fault parameters"),
        ("slow", {"seconds": -1}, "negative"),
    ],
)
def test_bad_faults_are_refused(
    emu: ClerkEmulator, kind: str, params: dict[str, Any], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        emu.set_fault(kind, **params)


async def test_calls_count_every_request_that_reached_a_route(
    emu: ClerkEmulator, call: Call, client: Client
) -> None:
    partner = emu.create_machine("partner")
    await call("/m2m_tokens", {}, key=partner.secret_key)
    await call("/m2m_tokens/verify", {"token": "mt_x"}, key=None)  # 401
    await call("/v1/m2m_tokens/verify", raw=b"nope")  # 400
    await call("/oauth_applications/access_tokens/verify", {"access_token": "oat_x"})
    await call("/api_keys/verify", {"secret": "ak_x"})
    await call("/m2m_tokens/mt_0/revoke", {})
    emu.set_fault("error", jwks=True)
    async with client.get("/v1/jwks") as resp:
        assert resp.status == 500
    expected = {
        "m2m_create": 1,
        "m2m_verify": 2,
        "oauth_verify": 1,
        "api_key_verify": 1,
        "m2m_revoke": 1,
        "jwks": 1,
    }
    assert dict(emu.calls) == expected
    async with client.get("/__emulator/calls") as resp:
        assert await resp.json() == expected  # control calls are not counted
    async with client.post("/__emulator/reset") as resp:
        assert resp.status == 200
    assert (sum(emu.calls.values()), emu.faults) == (0, {})


async def test_faults_over_http(emu: ClerkEmulator, client: Client, call: Call) -> None:
    async with client.post(
        "/__emulator/faults", json={"kind": "rate_limit", "retry_after": 3}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["rate_limit"]["retry_after"] == 3
    async with client.post("/m2m_tokens/verify", json={"token": "mt_x"}) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
    async with client.post("/__emulator/faults", json={"kind": "meteor"}) as resp:
        assert resp.status == 400
        assert "unknown fault" in (await resp.json())["error"]
    async with client.delete("/__emulator/faults") as resp:
        assert resp.status == 200
    async with client.get("/__emulator/faults") as resp:
        assert await resp.json() == {}


async def test_minting_over_http(emu: ClerkEmulator, client: Client, call: Call) -> None:
    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with client.post(f"/__emulator/{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()
            result: dict[str, Any] = await resp.json()
            return result

    api = await post("machines", {"name": "scores-api"})
    partner = await post("machines", {"name": "partner", "scoped_machines": [api["id"]]})
    assert partner["secret_key"].startswith("ak_") and partner["scoped_machines"] == [api["id"]]
    issued = await post("m2m_tokens", {"machine_id": partner["id"], "claims": {"x": 1}})
    status, body = await call(
        "/m2m_tokens/verify", {"token": issued["secret"]}, key=api["secret_key"]
    )
    assert (status, body["id"], body["claims"]) == (200, issued["id"], {"x": 1})
    key = (await post("api_keys", {"subject": "org_1", "scopes": ["a"]}))["secret"]
    assert (await call("/api_keys/verify", {"secret": key}))[1]["subject"] == "org_1"
    oat = (await post("oauth_tokens", {"user_id": "user_1"}))["token"]
    assert (await call("/oauth_applications/access_tokens/verify", {"access_token": oat}))[0] == 200
    oauth_jwt = (await post("oauth_tokens", {"user_id": "user_1", "token_format": "jwt"}))["token"]
    assert jwt.get_unverified_header(oauth_jwt)["typ"] == "at+jwt"
    session = (await post("session_tokens", {"user_id": "user_1", "org_id": "org_1"}))["token"]
    assert (await verify_with_jwks(client, session, emu.now()))["o"]["id"] == "org_1"
    async with client.post("/__emulator/session_tokens", json={"nope": 1}) as resp:
        assert resp.status == 400


async def test_serve_and_seed_on_a_free_port() -> None:
    running = await serve("127.0.0.1", 0, secret_key="sk_test_served")
    try:
        seeded = seed_demo(running.emulator)
        assert running.url.startswith("http://127.0.0.1:") and not running.url.endswith(":0")
        async with aiohttp.ClientSession() as session:
            async with session.post(
                running.url + "/v1/m2m_tokens/verify",
                json={"token": seeded["m2m_token_secret"]},
                headers={"Authorization": f"Bearer {seeded['scores_api_machine_secret_key']}"},
            ) as resp:
                body = await resp.json()
        assert (resp.status, body["id"]) == (200, seeded["m2m_token_id"])
        assert body["subject"] == seeded["scores_partner_machine_id"]
    finally:
        await running.close()


async def test_run_emulator_prints_one_json_line_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from proxy.emulator.app import run_emulator; run_emulator('127.0.0.1', 0, 'sk_test_cli')",
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        seeded = json.loads(line)
        assert seeded["secret_key"] == "sk_test_cli"
        async with aiohttp.ClientSession() as session:
            async with session.post(
                seeded["url"] + "/m2m_tokens/verify",
                json={"token": seeded["m2m_token_secret"]},
                headers={"Authorization": "Bearer sk_test_cli"},
            ) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
