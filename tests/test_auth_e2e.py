"""Verification as users see it: real client → proxy (real ClerkVerifier) → real upstream,
with the Clerk emulator as Clerk, all over sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.config.load import build_config
from proxy.emulator.app import ClerkEmulator
from proxy.request.app import PROXY, create_app
from tests.support import Recorder, config_dict, header_values, upstream_app

ROUTES = [
    {"name": "matches", "path": "/api/v1/matches/**", "methods": ["GET"], "auth": "required"},
    {"name": "admin", "path": "/api/v1/admin/**", "auth": "required", "scopes": ["scores:admin"]},
    {"name": "feeds", "path": "/api/v1/feeds/**", "auth": "required", "principal_types": ["machine"]},
    {"name": "socketio", "path": "/socket.io/**", "auth": "optional"},
]


def _cache_counts(metrics: str) -> dict[str, float]:
    prefix = 'authproxy_verify_cache_total{result="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(prefix)
    }


@dataclass
class Stack:
    emulator: ClerkEmulator
    proxy: TestServer
    recorder: Recorder
    client: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return str(self.proxy.make_url(path))

    async def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, Any], Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.client.get(self.url(path), headers=headers) as resp:
            body = await resp.json()
            return resp.status, dict(resp.headers), body

    def metrics(self) -> str:
        return self.proxy.app[PROXY].metrics.render().decode()


@pytest.fixture
async def stack_factory(aiohttp_server: Any) -> AsyncIterator[Any]:
    sessions: list[aiohttp.ClientSession] = []

    async def build(**overrides: Any) -> Stack:
        emulator = ClerkEmulator("sk_test_e2e")
        clerk = await aiohttp_server(emulator.app)
        recorder = Recorder()
        upstream = await aiohttp_server(upstream_app(recorder))
        raw = config_dict(str(upstream.make_url("")).rstrip("/"), routes=ROUTES)
        raw["clerk"] = {"api_url": str(clerk.make_url("")).rstrip("/"), "secret_key": "sk_test_e2e"}
        for key, value in overrides.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        config = build_config(raw, file="e2e.yaml")
        proxy = await aiohttp_server(create_app(config))
        client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        sessions.append(client)
        return Stack(emulator, proxy, recorder, client)

    yield build
    for session in sessions:
        await session.close()


async def test_valid_m2m_token_reaches_upstream_as_principal(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    api = s.emulator.create_machine("scores-api")
    partner = s.emulator.create_machine("partner", scoped_machines=[api.id])
    token = s.emulator.create_m2m_token(partner.id, claims={"tier": "gold"})
    status, _, _ = await s.get("/api/v1/matches/today", token.secret)
    assert status == 200
    seen = s.recorder.last.headers
    assert header_values(seen, "X-Auth-Principal-Type") == ["machine"]
    assert header_values(seen, "X-Auth-Principal-Id") == [partner.id]
    assert header_values(seen, "X-Auth-Token-Type") == ["m2m_token"]
    assert header_values(seen, "X-Auth-Token-Id") == [token.id]
    assert header_values(seen, "X-Auth-Scopes") == [api.id]
    assert header_values(seen, "X-Auth-Claims") == ['{"tier":"gold"}']
    assert header_values(seen, "Authorization") == []
    assert token.secret not in json.dumps(seen)
    assert s.emulator.calls["m2m_verify"] == 1


async def test_token_id_is_refused_without_calling_clerk(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    partner = s.emulator.create_machine("partner")
    token = s.emulator.create_m2m_token(partner.id)
    status, headers, body = await s.get("/api/v1/matches", token.id)
    assert status == 401
    assert body["error"]["code"] == "token_id_not_secret"
    assert "secret" in body["error"]["message"]
    assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert sum(s.emulator.calls.values()) == 0
    assert s.recorder.seen == []


async def test_missing_and_garbage_tokens(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    status, headers, body = await s.get("/api/v1/matches")
    assert (status, body["error"]["code"], headers["WWW-Authenticate"]) == (401, "token_missing", "Bearer")
    status, _, body = await s.get("/api/v1/matches", "not-a-token")
    assert (status, body["error"]["code"]) == (401, "token_invalid")
    assert sum(s.emulator.calls.values()) == 0


async def test_revoked_token_is_refused_within_ttl(stack_factory: Any) -> None:
    s: Stack = await stack_factory(cache={"ttl_seconds": 0.3})
    partner = s.emulator.create_machine("partner")
    token = s.emulator.create_m2m_token(partner.id)
    assert (await s.get("/api/v1/matches", token.secret))[0] == 200
    s.emulator.revoke_m2m_token(token.id, "leaked")
    await asyncio.sleep(0.4)
    status, _, body = await s.get("/api/v1/matches", token.secret)
    assert status == 401
    assert body["error"]["code"] == "token_invalid"


async def test_token_from_another_instance_is_refused(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    other = ClerkEmulator("sk_test_other")
    foreign = other.create_m2m_token(other.create_machine("x").id)
    status, _, body = await s.get("/api/v1/matches", foreign.secret)
    assert status == 401
    assert "instance" in body["error"]["message"]
    foreign_jwt = other.mint_session_jwt("user_abc", expires_in=60)
    status, _, body = await s.get("/api/v1/matches", foreign_jwt)
    assert status == 401


async def test_one_cold_token_1000_concurrent_requests_make_one_call(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    token = s.emulator.create_m2m_token(s.emulator.create_machine("p").id)
    results = await asyncio.gather(*(s.get("/api/v1/matches", token.secret) for _ in range(1000)))
    assert {r[0] for r in results} == {200}
    assert s.emulator.calls["m2m_verify"] == 1


async def test_10000_requests_within_ttl_make_one_call_and_one_more_after(stack_factory: Any) -> None:
    s: Stack = await stack_factory(cache={"ttl_seconds": 600})
    token = s.emulator.create_m2m_token(s.emulator.create_machine("p").id)

    async def worker(n: int) -> None:
        for _ in range(n):
            status, _, _ = await s.get("/api/v1/matches", token.secret)
            assert status == 200

    await asyncio.gather(*(worker(500) for _ in range(20)))
    assert s.emulator.calls["m2m_verify"] == 1
    counts = _cache_counts(s.metrics())
    assert counts["miss"] == 1
    assert counts["hit"] + counts.get("coalesced", 0) == 9999

    # A TTL a loaded 2-core box cannot outrun with 20 requests (0.2 s and 50 requests
    # saw a second call, a refresh ahead, under load).
    short: Stack = await stack_factory(cache={"ttl_seconds": 1.0})
    token = short.emulator.create_m2m_token(short.emulator.create_machine("p").id)
    for _ in range(20):
        assert (await short.get("/api/v1/matches", token.secret))[0] == 200
    assert short.emulator.calls["m2m_verify"] == 1
    await asyncio.sleep(1.2)
    assert (await short.get("/api/v1/matches", token.secret))[0] == 200
    assert short.emulator.calls["m2m_verify"] == 2


@pytest.mark.parametrize(
    ("fault", "params", "retry_after"),
    [("down", {}, None), ("error", {"status": 500}, None), ("rate_limit", {"retry_after": 1}, "1"),
     ("slow", {"seconds": 3}, None)],
)
async def test_clerk_failures_are_503_and_never_cached(
    stack_factory: Any, fault: str, params: dict[str, Any], retry_after: str | None
) -> None:
    s: Stack = await stack_factory(clerk={"timeout": 0.5})
    token = s.emulator.create_m2m_token(s.emulator.create_machine("p").id)
    s.emulator.set_fault(fault, **params)
    status, headers, body = await s.get("/api/v1/matches", token.secret)
    assert status == 503
    assert body["error"]["code"] == "verification_unavailable"
    assert "Retry-After" in headers
    if retry_after:
        assert headers["Retry-After"] == retry_after
    # On an optional route Clerk failing is still 503: never silently anonymous.
    status, _, body = await s.get("/socket.io/?EIO=4&transport=polling", token.secret)
    assert status == 503
    s.emulator.clear_faults()
    # Clerk is back, but the proxy waits out Clerk's Retry-After or its own backoff pause
    # (about a second at most here) before it calls again: nothing was cached meanwhile.
    calls = sum(s.emulator.calls.values())
    for _ in range(40):
        status, headers, _ = await s.get("/api/v1/matches", token.secret)
        if status == 200:
            break
        assert (status, sum(s.emulator.calls.values())) == (503, calls)
        await asyncio.sleep(min(0.1, int(headers["Retry-After"])))
    assert status == 200
    assert s.recorder.last.raw_path == "/api/v1/matches"


async def test_stale_if_error_keeps_cached_token_working_through_outage(stack_factory: Any) -> None:
    s: Stack = await stack_factory(cache={"ttl_seconds": 0.2, "stale_if_error_seconds": 60})
    token = s.emulator.create_m2m_token(s.emulator.create_machine("p").id, seconds_until_expiration=1.5)
    assert (await s.get("/api/v1/matches", token.secret))[0] == 200
    s.emulator.set_fault("down")
    await asyncio.sleep(0.3)
    assert (await s.get("/api/v1/matches", token.secret))[0] == 200
    assert 'authproxy_verify_cache_total{result="stale"}' in s.metrics()
    await asyncio.sleep(1.4)  # past the token's own expiry
    assert (await s.get("/api/v1/matches", token.secret))[0] != 200


async def test_random_token_flood_is_bounded_by_the_budget(stack_factory: Any) -> None:
    s: Stack = await stack_factory(
        verification_budget={"global": {"rate": 1000, "burst": 1000}, "per_ip": {"rate": 0.01, "burst": 25}}
    )
    statuses: list[int] = []

    async def attacker(n: int) -> None:
        for _ in range(n):
            statuses.append((await s.get("/api/v1/matches", "mt_" + secrets.token_urlsafe(36)))[0])

    await asyncio.gather(*(attacker(100) for _ in range(50)))
    assert len(statuses) == 5000
    assert s.emulator.calls["m2m_verify"] <= 25 + 1
    assert statuses.count(429) >= 5000 - 26
    status, headers, body = await s.get("/api/v1/matches", "mt_" + secrets.token_urlsafe(36))
    assert (status, body["error"]["code"]) == (429, "verification_budget_exceeded")
    assert int(headers["Retry-After"]) >= 1


async def test_every_token_kind_is_verified(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    e = s.emulator
    cases = [
        (e.mint_session_jwt("user_2abc", expires_in=60), "user", "session_token"),
        (e.mint_m2m_jwt(e.create_machine("j").id, expires_in=600), "machine", "m2m_token"),
        (e.create_oauth_token("user_2oauth", scopes=["read"]), "oauth", "oauth_token"),
        (e.create_api_key("user_2key", scopes=["read"]), "api_key", "api_key"),
    ]
    for token, ptype, ttype in cases:
        status, _, _ = await s.get("/api/v1/matches", token)
        assert status == 200, (ptype, status)
        seen = s.recorder.last.headers
        assert header_values(seen, "X-Auth-Principal-Type") == [ptype]
        assert header_values(seen, "X-Auth-Token-Type") == [ttype]


async def test_scopes_are_judged_per_route_not_cached(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    key = s.emulator.create_api_key("user_2key", scopes=["scores:read"])
    assert (await s.get("/api/v1/matches", key))[0] == 200
    status, headers, body = await s.get("/api/v1/admin/reset", key)
    assert status == 403
    assert body["error"]["code"] == "insufficient_scope"
    assert headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="scores:admin"'
    admin_key = s.emulator.create_api_key("user_2adm", scopes=["scores:admin"])
    assert (await s.get("/api/v1/admin/reset", admin_key))[0] == 200
    # principal_types: the feeds route is for machines only.
    assert (await s.get("/api/v1/feeds/live", key))[0] == 403
    m2m = s.emulator.create_m2m_token(s.emulator.create_machine("p").id)
    assert (await s.get("/api/v1/feeds/live", m2m.secret))[0] == 200


async def test_optional_route_falls_back_to_anonymous(stack_factory: Any) -> None:
    s: Stack = await stack_factory()
    status, _, _ = await s.get("/socket.io/?EIO=4&transport=polling&t=x", "mt_" + "z" * 40)
    assert status == 200
    assert header_values(s.recorder.last.headers, "X-Auth-Principal-Type") == ["anonymous"]
    assert 'result="anonymous_fallback"' in s.metrics()


async def test_no_token_in_logs_or_metrics(stack_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s: Stack = await stack_factory()
    token = s.emulator.create_m2m_token(s.emulator.create_machine("p").id)
    bad = "mt_" + secrets.token_urlsafe(36)
    await s.get("/api/v1/matches", token.secret)
    await s.get("/api/v1/matches", bad)
    s.emulator.set_fault("error", status=500)
    await s.get("/api/v1/matches", "mt_" + secrets.token_urlsafe(36))
    text = caplog.text + s.metrics()
    for secret in (token.secret, bad, "sk_test_e2e"):
        assert secret not in text
    metrics = s.metrics()
    assert 'authproxy_auth_decisions_total{result="allowed",token_type="m2m_token"} 1.0' in metrics
    assert 'authproxy_auth_decisions_total{result="token_invalid",token_type="m2m_token"} 1.0' in metrics
    assert 'authproxy_clerk_requests_total{endpoint="m2m_verify",status="200"} 1.0' in metrics


async def test_one_connection_switching_tokens_gets_each_tokens_principal(stack_factory: Any) -> None:
    """Keep-alive connections remember their last cache hit: a connection that changes
    token must never be answered from that memo."""
    s: Stack = await stack_factory()
    a = s.emulator.create_m2m_token(s.emulator.create_machine("partner-a").id)
    b = s.emulator.create_m2m_token(s.emulator.create_machine("partner-b").id)
    ids = {a.secret: a.id, b.secret: b.id}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one:
        for token in [a.secret, a.secret, b.secret, "mt_" + "x" * 40, a.secret, b.secret, b.secret]:
            headers = {"Authorization": f"Bearer {token}"}
            async with one.get(s.url("/api/v1/matches"), headers=headers) as resp:
                await resp.read()
                if token in ids:
                    assert resp.status == 200
                    assert header_values(s.recorder.last.headers, "X-Auth-Token-Id") == [ids[token]]
                else:
                    assert resp.status == 401
    assert s.emulator.calls["m2m_verify"] == 3  # a, b and the bad one; the rest are hits


async def test_a_principal_without_scopes_gets_no_scopes_field(stack_factory: Any) -> None:
    """A session token grants no scopes: no `X-Auth-Scopes` at all, not an empty one."""
    s: Stack = await stack_factory()
    e = s.emulator
    assert (await s.get("/api/v1/matches", e.mint_session_jwt("user_2abc", expires_in=60)))[0] == 200
    seen = s.recorder.last.headers
    assert header_values(seen, "X-Auth-Principal-Type") == ["user"]
    assert header_values(seen, "X-Auth-Scopes") == []
    assert (await s.get("/api/v1/matches", e.create_api_key("user_2key", scopes=["read"])))[0] == 200
    assert header_values(s.recorder.last.headers, "X-Auth-Scopes") == ["read"]
