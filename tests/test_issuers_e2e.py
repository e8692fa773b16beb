"""Other OAuth issuers end to end: the issuer emulator's real token endpoint → proxy (real
verifier) → recording upstream; routing by `iss`, route rules per issuer, key rotation,
outages, discovery, and a real OAuth client library (Authlib) as the partner."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client

from proxy.emulator.issuer_app import IssuerEmulator
from tests.support import header_values
from tests.support_issuers import API, IssuerStack, authgear_entry, issuer_stack, token_for

__all__ = ["issuer_stack"]  # the fixture, used by name


async def machine_token(s: IssuerStack, client_id: str = "svc-a", **form: str) -> str:
    emu = s.issuers["authgear"]
    client = emu.add_client(client_id, resources={API: ("scores:read", "feeds:read")})
    return await token_for(s.client, emu.issuer, client.client_id, client.client_secret, **form)


async def test_client_credentials_token_reaches_upstream_as_a_machine(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack()
    token = await machine_token(s, scope="scores:read")
    status, _, _ = await s.get("/api/v1/matches/today", token)
    assert status == 200
    seen = s.recorder.last.headers
    assert header_values(seen, "X-Auth-Principal-Type") == ["machine"]
    assert header_values(seen, "X-Auth-Principal-Id") == ["svc-a"]
    assert header_values(seen, "X-Auth-Token-Type") == ["m2m_token"]
    assert header_values(seen, "X-Auth-Scopes") == ["scores:read"]
    assert header_values(seen, "X-Auth-Issuer") == ["authgear"]
    assert len(header_values(seen, "X-Auth-Token-Id")[0]) == 32  # the jti
    assert token not in json.dumps(seen)
    # Discovery once, JWKS once; the second request is a cache hit.
    assert (await s.get("/api/v1/matches/today", token))[0] == 200
    calls = s.issuers["authgear"].calls
    assert (calls["discovery"], calls["jwks"]) == (1, 1)


async def test_clerk_tokens_carry_no_issuer_header(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack()
    machine = s.clerk.create_machine("partner")
    token = s.clerk.create_m2m_token(machine.id)
    assert (await s.get("/api/v1/matches", token.secret))[0] == 200
    assert header_values(s.recorder.last.headers, "X-Auth-Issuer") == []


async def test_a_client_cannot_send_its_own_issuer_header(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack()
    token = s.clerk.create_m2m_token(s.clerk.create_machine("partner").id)
    async with s.client.get(
        s.url("/api/v1/matches"),
        headers={"Authorization": f"Bearer {token.secret}", "X-Auth-Issuer": "authgear"},
    ) as resp:
        assert resp.status == 200
    assert header_values(s.recorder.last.headers, "X-Auth-Issuer") == []


async def test_a_token_of_an_unserved_issuer_is_refused_by_name(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack()
    stranger = IssuerEmulator("https://login.stranger.example")
    token = stranger.mint({"iss": stranger.issuer, "aud": API, "exp": time.time() + 60})
    authgear = s.issuers["authgear"]
    for _ in range(300):  # the start-up fetch of authgear's keys, done before we ask
        if authgear.calls["jwks"]:
            break
        await asyncio.sleep(0.01)
    before = sum(authgear.calls.values())
    status, headers, body = await s.get("/api/v1/matches", token)
    assert (status, body["error"]["code"]) == (401, "token_invalid")
    assert "https://login.stranger.example" in body["error"]["message"]
    # Which issuers this proxy trusts is the operator's to know (issue 28): not in answers.
    assert "clerk" not in body["error"]["message"] and "authgear" not in body["error"]["message"]
    assert "login.stranger.example" in headers["WWW-Authenticate"]
    assert sum(authgear.calls.values()) == before


async def test_without_clerk_issuer_a_stranger_is_clerks_to_refuse_by_name(
    issuer_stack: Any,
) -> None:
    s: IssuerStack = await issuer_stack(clerk_issuer=False)
    stranger = IssuerEmulator("https://login.stranger.example")
    token = stranger.mint({"iss": stranger.issuer, "aud": API, "exp": time.time() + 60})
    status, _, body = await s.get("/api/v1/matches", token)
    assert (status, body["error"]["code"]) == (401, "token_invalid")
    assert "names https://login.stranger.example, which is not a configured issuer" in (
        body["error"]["message"]
    )
    # Clerk's own session tokens still pass, their iss unchecked as before.
    session = s.clerk.mint_session_jwt("user_1")
    assert (await s.get("/api/v1/matches", session))[0] == 200


async def test_an_unshowable_issuer_is_not_echoed(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack()
    stranger = IssuerEmulator("x")
    token = stranger.mint({"iss": 'evil"\r\nX-Injected: 1', "aud": API, "exp": time.time() + 60})
    status, headers, body = await s.get("/api/v1/matches", token)
    assert status == 401
    assert "an issuer, which this proxy does not serve" in body["error"]["message"]
    assert "Injected" not in headers["WWW-Authenticate"]


async def test_route_rules_are_per_issuer(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack()
    a = await machine_token(s, "svc-a", scope="scores:read feeds:read")
    b = await machine_token(s, "svc-b", scope="scores:read")
    # The admin route's scopes are Clerk's: an authgear token never satisfies them,
    # whatever scope words it carries.
    emu = s.issuers["authgear"]
    admin = emu.add_client("svc-admin", resources={API: ("scores:admin",)})
    admin_token = await token_for(s.client, emu.issuer, "svc-admin", admin.client_secret)
    status, _, body = await s.get("/api/v1/admin/x", admin_token)
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    assert "issuers.authgear" in body["error"]["message"]
    # A Clerk machine allow-list is Clerk's too: no authgear machine passes it.
    status, _, body = await s.get("/api/v1/clerk-machines/x", a)
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    # feeds: authgear's own rule (feeds:read); Clerk is not listed there.
    assert (await s.get("/api/v1/feeds/live", a))[0] == 200
    status, headers, body = await s.get("/api/v1/feeds/live", b)
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    assert headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="feeds:read"'
    clerk_token = s.clerk.create_m2m_token(s.clerk.create_machine("p").id).secret
    status, _, body = await s.get("/api/v1/feeds/live", clerk_token)
    assert (status, body["error"]["code"]) == (403, "issuer_not_allowed")
    assert "does not accept tokens of clerk" in body["error"]["message"]
    # partners: clerk and authgear's svc-a only.
    assert (await s.get("/api/v1/partners/1", clerk_token))[0] == 200
    assert (await s.get("/api/v1/partners/1", a))[0] == 200
    status, _, body = await s.get("/api/v1/partners/1", b)
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    assert "svc-b" in body["error"]["message"]


async def test_key_rotation_is_picked_up(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack(
        {"authgear": lambda url: {**authgear_entry(url), "jwks_min_refetch_seconds": 0.1}}
    )
    old = await machine_token(s, "svc-a")
    assert (await s.get("/api/v1/matches", old))[0] == 200
    emu = s.issuers["authgear"]
    emu.rotate_key()
    await asyncio.sleep(0.15)  # past the refetch interval
    new = await token_for(s.client, emu.issuer, "svc-a", emu.clients["svc-a"].client_secret)
    assert (await s.get("/api/v1/matches", new))[0] == 200  # unknown kid → one refetch
    assert emu.calls["jwks"] == 2


async def test_issuer_outage(issuer_stack: Any) -> None:
    # Down from the start: the start-up fetch fails (both well-known documents tried).
    s: IssuerStack = await issuer_stack(faults={"down": {"endpoints": ["discovery", "jwks"]}})
    token = await machine_token(s)
    emu = s.issuers["authgear"]
    for _ in range(300):
        if emu.calls["discovery"] >= 2:
            break
        await asyncio.sleep(0.01)
    status, headers, body = await s.get("/api/v1/matches", token)
    assert (status, body["error"]["code"]) == (503, "verification_unavailable")
    assert "Retry-After" in headers
    tried = emu.calls["discovery"]
    assert tried >= 2  # both well-known documents
    emu.clear_faults()
    # Keys still unknown, but the failed fetch backs off (5 s): no fetch per request.
    for _ in range(5):
        assert (await s.get("/api/v1/matches", token))[0] == 503
    assert emu.calls["discovery"] == tried


async def test_discovery_of_another_issuer_is_not_used(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack(
        {"authgear": lambda url: {**authgear_entry(url), "issuer": url + "/tenant"}}
    )
    emu = s.issuers["authgear"]
    emu.issuer = s.urls["authgear"] + "/tenant"  # its tokens name it…
    client = emu.add_client("svc-a", resources={API: ("scores:read",)})
    token = emu.issue(client, API, ("scores:read",))
    emu.issuer = s.urls["authgear"]  # …but its discovery document names another
    status, _, body = await s.get("/api/v1/matches", token)
    assert (status, body["error"]["code"]) == (503, "verification_unavailable")
    assert emu.calls["jwks"] == 0
    assert "authproxy_issuer_requests_total" in s.metrics()


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_client_credentials_through_the_proxy(
    issuer_stack: Any, method: str
) -> None:
    """A real OAuth client library (Authlib's httpx client) is the partner: it gets the
    token itself and calls the API through the proxy."""
    s: IssuerStack = await issuer_stack()
    emu = s.issuers["authgear"]
    partner = emu.add_client("svc-authlib", resources={API: ("scores:read", "feeds:read")})
    async with AsyncOAuth2Client(
        client_id=partner.client_id,
        client_secret=partner.client_secret,
        token_endpoint_auth_method=method,
        scope="feeds:read",
    ) as client:
        token = await client.fetch_token(
            f"{emu.issuer}/oauth2/token", grant_type="client_credentials", resource=API
        )
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "feeds:read"
        resp = await client.get(s.url("/api/v1/feeds/live"))
        assert resp.status_code == 200, resp.text
    seen = s.recorder.last.headers
    assert header_values(seen, "X-Auth-Principal-Type") == ["machine"]
    assert header_values(seen, "X-Auth-Principal-Id") == ["svc-authlib"]
    assert header_values(seen, "X-Auth-Scopes") == ["feeds:read"]
    assert header_values(seen, "X-Auth-Issuer") == ["authgear"]
    assert emu.calls["token"] == 1


async def test_authlib_sees_the_emulator_refuse_a_wrong_secret(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack()
    emu = s.issuers["authgear"]
    emu.add_client("svc-x", resources={API: ("scores:read",)})
    async with AsyncOAuth2Client(client_id="svc-x", client_secret="wrong") as client:
        with pytest.raises(Exception) as info:
            await client.fetch_token(
                f"{emu.issuer}/oauth2/token", grant_type="client_credentials", resource=API
            )
    assert "invalid_client" in str(info.value)


async def test_the_emulators_form_endpoints_refuse_another_body(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack()
    emu = s.issuers["authgear"]
    for endpoint in ("token", "introspect"):
        async with s.client.post(f"{emu.issuer}/oauth2/{endpoint}", json={"token": "x"}) as resp:
            assert resp.status == 400
            assert resp.headers["Content-Type"] == "application/json"
            assert await resp.json() == {
                "error": "invalid_request",
                "error_description": "send a form",
            }
        assert emu.calls[endpoint] == 1


@pytest.mark.filterwarnings("ignore:authlib.jose module is deprecated")
async def test_authlib_jose_verifies_the_emulators_tokens(issuer_stack: Any) -> None:
    """A second opinion on the emulator: Authlib's own JOSE code checks its JWKS and tokens."""
    from authlib.jose import JsonWebKey, JsonWebToken

    s: IssuerStack = await issuer_stack()
    emu = s.issuers["authgear"]
    token = await machine_token(s)
    async with s.client.get(f"{emu.issuer}/.well-known/openid-configuration") as resp:
        meta = await resp.json()
    async with s.client.get(meta["jwks_uri"]) as resp:
        assert "max-age=" in resp.headers["Cache-Control"]
        jwks = await resp.json()
    assert meta["issuer"] == emu.issuer
    keys = JsonWebKey.import_key_set(jwks)
    claims = JsonWebToken(["RS256"]).decode(token, keys)
    claims.validate()
    assert claims["sub"] == f"client_id_{claims['client_id']}"
    assert claims["aud"] == API
    assert set(claims) == {"jti", "iss", "aud", "iat", "exp", "client_id", "scope", "sub"}


async def test_an_issuer_token_is_refreshed_ahead_by_its_own_issuer_never_by_clerk(
    issuer_stack: Any,
) -> None:
    s: IssuerStack = await issuer_stack(cache={"ttl_seconds": 1, "refresh_ahead": 0.5})
    token = await machine_token(s, scope="scores:read")
    assert (await s.get("/api/v1/matches/today", token))[0] == 200
    await asyncio.sleep(0.8)  # past the refresh point (0.5-0.75 s), still fresh
    assert (await s.get("/api/v1/matches/today", token))[0] == 200
    await asyncio.sleep(0.1)
    metrics = s.metrics()
    assert 'authproxy_verify_background_total{result="valid",trigger="ahead"} 1.0' in metrics
    assert sum(s.clerk.calls.values()) == 0  # never judged as a Clerk token
    assert 'result="miss"} 1.0' in metrics  # the first request only


async def test_an_issuers_keys_are_fetched_at_start_and_a_dead_one_is_logged(
    issuer_stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Day two: a wrong issuer URL or an unreachable issuer shows in the log when the proxy
    # starts, not when the first partner gets a 503; nobody waits for it.
    caplog.set_level(logging.INFO)
    s: IssuerStack = await issuer_stack()
    emu = s.issuers["authgear"]
    for _ in range(200):
        if emu.calls["jwks"]:
            break
        await asyncio.sleep(0.01)
    assert (emu.calls["discovery"], emu.calls["jwks"]) == (1, 1)  # before any request
    await asyncio.sleep(0.05)
    assert "JWKS fetched for issuer authgear" in caplog.text

    caplog.clear()
    dead = {**authgear_entry("http://127.0.0.1:9"), "name": "authgear"}
    started = time.monotonic()
    s2: IssuerStack = await issuer_stack({"authgear": lambda _url: dead})
    assert time.monotonic() - started < 5, "start-up does not wait for an issuer"
    for _ in range(300):
        if "discovery for issuer authgear failed" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert "discovery for issuer authgear failed" in caplog.text
    async with s2.client.get(s2.proxy.make_url("/api/v1/matches")) as resp:
        assert resp.status == 401  # serving meanwhile: a missing token is answered as ever
