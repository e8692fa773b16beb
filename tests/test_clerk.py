"""The Clerk client: pure response parsing (table-driven), then the wire contract and
failure mapping against a scripted local server that records what it received."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from proxy.auth.clerk.api import (
    API_KEY,
    M2M,
    OAUTH,
    ClerkClient,
    ClerkSettingRefusal,
    Endpoint,
    classify_failure,
    parse_verify_response,
)
from proxy.auth.tokens import TokenKind
from proxy.config.load import Config, build_config
from proxy.core.errors import (
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    VERIFICATION_NOT_ENABLED,
    VERIFICATION_UNAVAILABLE,
    ProxyError,
)
from proxy.observe.metrics import Metrics

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
SECRET = "mt_" + "S3cr3tValue" * 4


def m2m_body(**over: Any) -> bytes:
    body = {
        "object": "machine_to_machine_token",
        "id": "mt_0123456789abcdef0123456789abcdef",
        "subject": "mch_2xYpartner000000000000000001",
        "claims": {"tier": "gold"},
        "scopes": ["mch_2xYscoresapi0000000000000001"],
        "revoked": False,
        "revocation_reason": None,
        "expired": False,
        "expiration": NOW_MS + 3_600_000,
        "last_used_at": None,
        "created_at": NOW_MS - 1000,
        "updated_at": NOW_MS - 1000,
    }
    body.update(over)
    return json.dumps(body).encode()


def test_parse_m2m() -> None:
    p = parse_verify_response(M2M, m2m_body(), NOW)
    assert (p.type, p.id, p.token_type, p.token_id) == (
        "machine",
        "mch_2xYpartner000000000000000001",
        "m2m_token",
        "mt_0123456789abcdef0123456789abcdef",
    )
    assert p.scopes == {"mch_2xYscoresapi0000000000000001"}
    assert p.claims_json == '{"tier":"gold"}'
    assert p.expires_at == NOW + 3600


@pytest.mark.parametrize(
    ("endpoint", "over", "expected"),
    [
        (
            OAUTH,
            {"subject": "user_1", "id": "oat_1", "scopes": ["read", "write"]},
            ("oauth", "oauth_token"),
        ),
        (API_KEY, {"subject": "org_1", "id": "ak_1", "claims": None}, ("api_key", "api_key")),
        (M2M, {"expiration": None, "scopes": None}, ("machine", "m2m_token")),
    ],
)
def test_parse_other_kinds(
    endpoint: Endpoint, over: dict[str, Any], expected: tuple[str, str]
) -> None:
    p = parse_verify_response(endpoint, m2m_body(**over), NOW)
    assert (p.type, p.token_type) == expected
    assert p.id == (over.get("subject") or "mch_2xYpartner000000000000000001")


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"revoked": True, "revocation_reason": "leaked"}, TOKEN_INVALID),
        ({"expired": True}, TOKEN_EXPIRED),
        ({"expiration": NOW_MS}, TOKEN_EXPIRED),
        ({"expiration": NOW_MS - 1}, TOKEN_EXPIRED),
        ({"active": False}, TOKEN_EXPIRED),  # the spec: "not active (expired)"
        # A 200 we cannot read is Clerk's problem, not the caller's.
        ({"subject": None}, VERIFICATION_UNAVAILABLE),
        ({"id": 5}, VERIFICATION_UNAVAILABLE),
        ({"scopes": [1]}, VERIFICATION_UNAVAILABLE),
        ({"expiration": "soon"}, VERIFICATION_UNAVAILABLE),
        ({"revoked": "no"}, VERIFICATION_UNAVAILABLE),
        ({"claims": [1]}, VERIFICATION_UNAVAILABLE),
        # Values that cannot travel in a header as they are would inject fields upstream.
        ({"subject": "mch_1\r\nX-Auth-Principal-Type: user"}, VERIFICATION_UNAVAILABLE),
        ({"id": "mt_1\n"}, VERIFICATION_UNAVAILABLE),
        ({"subject": "mch_\u00e9"}, VERIFICATION_UNAVAILABLE),
        ({"scopes": ["mch_1 mch_2"]}, VERIFICATION_UNAVAILABLE),
        ({"scopes": ["mch_1\x00"]}, VERIFICATION_UNAVAILABLE),
    ],
)
def test_parse_rejections(over: dict[str, Any], code: str) -> None:
    with pytest.raises(ProxyError) as info:
        parse_verify_response(M2M, m2m_body(**over), NOW)
    assert info.value.code == code


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"not json",
        b"null",
        # Issue 26 row 11: an expiration that is no date, or not JSON, is unreadable (it
        # overflowed, or never expired, before).
        m2m_body(expiration=10**400),
        m2m_body(expiration=-1),
        m2m_body().replace(str(NOW_MS + 3_600_000).encode(), b"NaN"),
        m2m_body().replace(str(NOW_MS + 3_600_000).encode(), b"1e400"),
    ],
    ids=["empty", "list", "text", "null", "exp-1e400-int", "exp-negative", "exp-nan", "exp-inf"],
)
def test_parse_garbage_is_unavailable(body: bytes) -> None:
    with pytest.raises(ProxyError) as info:
        parse_verify_response(M2M, body, NOW)
    assert info.value.code == VERIFICATION_UNAVAILABLE


CLERK_ERROR = json.dumps(
    {"errors": [{"message": "x", "long_message": "y", "code": "resource_not_found"}]}
).encode()


@pytest.mark.parametrize(
    ("status", "headers", "code", "retry_after"),
    [
        (404, {}, TOKEN_INVALID, None),
        (400, {}, TOKEN_INVALID, None),
        (422, {}, VERIFICATION_NOT_ENABLED, 60),  # an instance setting, not the caller
        (401, {}, VERIFICATION_UNAVAILABLE, 30),
        (403, {}, VERIFICATION_UNAVAILABLE, 30),
        (429, {"Retry-After": "17"}, VERIFICATION_UNAVAILABLE, 17),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, VERIFICATION_UNAVAILABLE, 2),
        (500, {}, VERIFICATION_UNAVAILABLE, 2),
        (503, {"Retry-After": "5"}, VERIFICATION_UNAVAILABLE, 5),
    ],
)
def test_classify_failure(
    status: int, headers: dict[str, str], code: str, retry_after: int | None
) -> None:
    err = classify_failure(M2M, status, headers, CLERK_ERROR)
    assert (err.code, err.retry_after) == (code, retry_after)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            b'{"errors":[{"code":"api_keys_not_enabled","message":"m","long_message":"l"}]}',
            "api_keys_not_enabled",
        ),
        (b'{"errors":[{"code":"Bad Code\\nX"}]}', "unknown"),  # never a free-form label value
        (b"not json", "unknown"),
        (b'{"errors":[]}', "unknown"),
    ],
)
def test_422_names_clerks_code(body: bytes, named: str) -> None:
    err = classify_failure(API_KEY, 422, {}, body)
    assert isinstance(err, ClerkSettingRefusal)
    assert (err.status, err.clerk_code, err.token_type) == (503, named, "api_key")
    assert named in err.message


def test_404_explains_instance_scoping() -> None:
    err = classify_failure(M2M, 404, {}, CLERK_ERROR)
    assert err.status == 401
    assert "scoped to one Clerk instance" in err.message


# --- the wire, against a scripted server ----------------------------------------------


@dataclass
class Script:
    """Answers in order (the last one repeats) and records every request."""

    answers: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    seen: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.path, dict(request.headers), json.loads(body) if body else None))
        status, headers, payload = self.answers[min(len(self.seen) - 1, len(self.answers) - 1)]
        return web.Response(
            status=status, headers=headers, body=payload, content_type="application/json"
        )


def clerk_config(url: str, **clerk: Any) -> Config:
    return build_config(
        {
            "upstream": {"url": "http://127.0.0.1:1"},
            "clerk": {"api_url": url, "secret_key": "sk_test_instance", "timeout": 0.5, **clerk},
        },
        file="test",
    )


@pytest.fixture
async def scripted(
    aiohttp_server: AiohttpServer,
) -> AsyncIterator[tuple[Script, str, aiohttp.ClientSession]]:
    script = Script()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        yield script, str(server.make_url("")).rstrip("/"), session


def client(url: str, session: aiohttp.ClientSession, metrics: Metrics, **clerk: Any) -> ClerkClient:
    return ClerkClient(clerk_config(url, **clerk).clerk, session, metrics, now=lambda: NOW)


@pytest.mark.parametrize(
    ("kind", "path", "field_name", "machine_key", "key"),
    [
        (TokenKind.M2M, "/m2m_tokens/verify", "token", "", "sk_test_instance"),
        (TokenKind.M2M, "/m2m_tokens/verify", "token", "ak_machinekey", "ak_machinekey"),
        (
            TokenKind.OAUTH,
            "/oauth_applications/access_tokens/verify",
            "access_token",
            "ak_machinekey",
            "sk_test_instance",
        ),
        (TokenKind.API_KEY, "/api_keys/verify", "secret", "ak_machinekey", "sk_test_instance"),
    ],
)
async def test_request_shape(
    scripted: tuple[Script, str, aiohttp.ClientSession],
    kind: TokenKind,
    path: str,
    field_name: str,
    machine_key: str,
    key: str,
) -> None:
    script, url, session = scripted
    script.answers = [(200, {}, m2m_body())]
    await client(url, session, Metrics(), machine_secret_key=machine_key).verify(kind, SECRET)
    [(seen_path, headers, body)] = script.seen
    assert seen_path == path
    assert body == {field_name: SECRET}
    assert headers["Authorization"] == f"Bearer {key}"
    assert headers["Content-Type"] == "application/json"
    assert headers["Clerk-API-Version"] == "2026-05-12"


@pytest.mark.parametrize(
    ("answers", "calls", "code", "retry_after"),
    [
        ([(500, {}, b"{}"), (200, {}, m2m_body())], 2, None, None),  # one quick retry
        ([(502, {}, b"{}")], 2, VERIFICATION_UNAVAILABLE, 2),
        # Clerk asked for 9 s: no quick retry (and no call before they pass: below).
        ([(503, {"Retry-After": "9"}, b"{}")], 1, VERIFICATION_UNAVAILABLE, 9),
        ([(429, {"Retry-After": "4"}, CLERK_ERROR)], 1, VERIFICATION_UNAVAILABLE, 4),
        ([(404, {}, CLERK_ERROR)], 1, TOKEN_INVALID, None),
        ([(401, {}, CLERK_ERROR)], 1, VERIFICATION_UNAVAILABLE, 30),
    ],
)
async def test_failure_mapping(
    scripted: tuple[Script, str, aiohttp.ClientSession],
    answers: list[tuple[int, dict[str, str], bytes]],
    calls: int,
    code: str | None,
    retry_after: int | None,
) -> None:
    script, url, session = scripted
    script.answers = answers
    metrics = Metrics()
    c = client(url, session, metrics)
    if code is None:
        assert (await c.verify(TokenKind.M2M, SECRET)).type == "machine"
    else:
        with pytest.raises(ProxyError) as info:
            await c.verify(TokenKind.M2M, SECRET)
        assert (info.value.code, info.value.retry_after) == (code, retry_after)
        assert info.value.token_type == "m2m_token"
    assert len(script.seen) == calls
    status = str(answers[0][0])
    assert metrics.registry.get_sample_value(
        "authproxy_clerk_requests_total", {"endpoint": "m2m_verify", "status": status}
    ) == (calls if len(answers) == 1 else 1)


async def test_bad_key_is_logged_loudly_and_not_blamed_on_the_caller(
    scripted: tuple[Script, str, aiohttp.ClientSession], caplog: pytest.LogCaptureFixture
) -> None:
    script, url, session = scripted
    script.answers = [
        (401, {}, json.dumps({"errors": [{"code": "machine_secret_key_invalid"}]}).encode())
    ]
    with caplog.at_level(logging.WARNING), pytest.raises(ProxyError) as info:
        await client(url, session, Metrics()).verify(TokenKind.M2M, SECRET)
    assert info.value.status == 503
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "secret key" in errors[0].getMessage()
    assert "machine_secret_key_invalid" in errors[0].getMessage()
    assert all(
        SECRET not in r.getMessage() and "sk_test_instance" not in r.getMessage()
        for r in caplog.records
    )


async def test_connection_refused_is_unavailable() -> None:
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProxyError) as info:
            await client("http://127.0.0.1:1", session, metrics).verify(TokenKind.M2M, SECRET)
    assert info.value.code == VERIFICATION_UNAVAILABLE
    assert info.value.retry_after == 2
    assert (
        metrics.registry.get_sample_value(
            "authproxy_clerk_requests_total", {"endpoint": "m2m_verify", "status": "error"}
        )
        == 2
    )


async def test_works_over_the_apps_shared_upstream_session(
    scripted: tuple[Script, str, aiohttp.ClientSession],
) -> None:
    """The app hands us its one pooled session, built for proxying (no automatic
    headers, no decompression): the Clerk call must still be complete on its own."""
    from proxy.http.forward import new_session

    script, url, _ = scripted
    script.answers = [(200, {}, m2m_body())]
    async with new_session(connect_timeout=1, read_timeout=1, pool_size=4) as session:
        p = await client(url, session, Metrics()).verify(TokenKind.M2M, SECRET)
    assert p.type == "machine"
    [(_, headers, body)] = script.seen
    assert body == {"token": SECRET}
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept-Encoding"] == "identity"


async def test_an_oversized_answer_is_unavailable(
    scripted: tuple[Script, str, aiohttp.ClientSession],
) -> None:
    script, url, session = scripted
    huge = json.dumps({"id": "mt_1", "subject": "mch_1", "claims": {"pad": "x" * 300_000}}).encode()
    script.answers = [(200, {}, huge)]
    with pytest.raises(ProxyError) as info:
        await client(url, session, Metrics()).verify(TokenKind.M2M, SECRET)
    assert info.value.code == VERIFICATION_UNAVAILABLE


async def test_a_large_answer_is_read_whole(
    scripted: tuple[Script, str, aiohttp.ClientSession],
) -> None:
    script, url, session = scripted
    claims = {f"k{i}": "v" * 100 for i in range(1500)}  # ~160 KB: many reads
    script.answers = [(200, {}, m2m_body(claims=claims))]
    p = await client(url, session, Metrics()).verify(TokenKind.M2M, SECRET)
    assert p.claims() == claims


# --- the gate: Retry-After, backoff and one probe, across calls -------------------------


class Mono:
    """The gate's clock: real time (the quick retry sleeps), plus jumps made by hand."""

    def __init__(self) -> None:
        self.t = 100.0
        self._start = time.monotonic()

    def __call__(self) -> float:
        return self.t + time.monotonic() - self._start


def gated(
    url: str, session: aiohttp.ClientSession, metrics: Metrics, mono: Mono
) -> ClerkClient:
    cfg = clerk_config(url, backoff_initial="100ms", backoff_max="2s").clerk
    return ClerkClient(cfg, session, metrics, now=lambda: NOW, monotonic=mono)


def held(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("authproxy_clerk_calls_held_total", {"reason": reason})
    return value or 0.0


async def test_retry_after_holds_every_call_until_it_passes(
    scripted: tuple[Script, str, aiohttp.ClientSession],
) -> None:
    script, url, session = scripted
    script.answers = [(429, {"Retry-After": "5"}, CLERK_ERROR), (200, {}, m2m_body())]
    metrics, mono = Metrics(), Mono()
    c = gated(url, session, metrics, mono)
    with pytest.raises(ProxyError) as info:
        await c.verify(TokenKind.M2M, SECRET)
    assert info.value.retry_after == 5
    for t in (0.0, 1.0, 4.9):  # every caller, every token: no call to Clerk
        mono.t = 100.0 + t
        with pytest.raises(ProxyError) as info:
            await c.verify(TokenKind.OAUTH, "oat_" + "x" * 32)
        assert info.value.code == VERIFICATION_UNAVAILABLE
        # Our pause is Clerk's plus up to 10 % jitter on top.
        assert math.ceil(5.0 - t) <= info.value.retry_after <= math.ceil(5.5 - t)
        assert info.value.token_type == "oauth_token"
    assert len(script.seen) == 1
    assert held(metrics, "retry_after") == 3
    mono.t = 100.0 + 5.6  # past it (and its jitter of at most 10 %)
    assert (await c.verify(TokenKind.M2M, SECRET)).type == "machine"
    assert len(script.seen) == 2


async def test_an_outage_costs_one_probe_per_pause_however_many_callers(
    scripted: tuple[Script, str, aiohttp.ClientSession],
) -> None:
    script, url, session = scripted
    script.answers = [(503, {}, b"{}")]
    metrics, mono = Metrics(), Mono()
    c = gated(url, session, metrics, mono)
    calls_per_step = []
    for _ in range(8):
        before = len(script.seen)
        results = await asyncio.gather(
            *(c.verify(TokenKind.M2M, SECRET) for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, ProxyError) and r.status == 503 for r in results)
        calls_per_step.append(len(script.seen) - before)
        mono.t += 2.5  # past the longest pause (backoff_max 2 s)
    # At the onset the 50 calls already out fail together, and one of them probes again
    # after the first pause; from then on, one probe per pause.
    assert calls_per_step == [51] + [1] * 7
    assert c.gate.failures == 9
    assert held(metrics, "backoff") + held(metrics, "probe") == 49 * 8


async def test_the_probe_that_succeeds_opens_the_gate_for_everyone(
    scripted: tuple[Script, str, aiohttp.ClientSession],
) -> None:
    script, url, session = scripted
    script.answers = [(500, {}, b"{}"), (500, {}, b"{}"), (200, {}, m2m_body())]
    metrics, mono = Metrics(), Mono()
    c = gated(url, session, metrics, mono)
    with pytest.raises(ProxyError):
        await c.verify(TokenKind.M2M, SECRET)  # a call and its quick retry
    mono.t += 1.0
    assert (await c.verify(TokenKind.M2M, SECRET)).type == "machine"
    results = await asyncio.gather(*(c.verify(TokenKind.M2M, SECRET) for _ in range(5)))
    assert len(results) == 5 and len(script.seen) == 8
    assert c.gate.failures == 0


async def test_a_refusal_from_clerk_is_not_an_outage(
    scripted: tuple[Script, str, aiohttp.ClientSession],
) -> None:
    script, url, session = scripted
    script.answers = [(404, {}, CLERK_ERROR)]
    metrics, mono = Metrics(), Mono()
    c = gated(url, session, metrics, mono)
    for _ in range(5):
        with pytest.raises(ProxyError) as info:
            await c.verify(TokenKind.M2M, SECRET)
        assert info.value.code == TOKEN_INVALID
    assert len(script.seen) == 5
    assert c.held() is None
