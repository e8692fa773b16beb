"""ClerkVerifier end to end against the Clerk emulator served on a real socket.

The verifier and the emulator share one fake clock (starting at the real time, moved
by hand), so TTLs and expiries are exact without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpServer

from proxy.auth.tokens import TokenKind
from proxy.auth.verifier import ClerkVerifier, jwt_principal
from proxy.config.load import build_config
from proxy.core.errors import (
    TOKEN_EXPIRED,
    TOKEN_ID_NOT_SECRET,
    TOKEN_INVALID,
    VERIFICATION_BUDGET_EXCEEDED,
    VERIFICATION_NOT_ENABLED,
    VERIFICATION_UNAVAILABLE,
    ProxyError,
)
from proxy.core.principal import Principal, Recent
from proxy.emulator.app import ClerkEmulator
from proxy.observe.metrics import Metrics

KEY = "sk_test_emulator"
IP = "203.0.113.7"


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


class Mono:
    """The Clerk gate's clock: real time (its quick retry sleeps), plus jumps by hand."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


@dataclass
class Rig:
    clerk: ClerkEmulator
    verifier: ClerkVerifier
    clock: Clock
    metrics: Metrics
    url: str
    mono: Mono

    def calls(self, endpoint: str = "m2m_verify") -> int:
        return int(self.clerk.calls[endpoint])

    async def verify(self, token: str, ip: str = IP) -> Principal:
        return await self.verifier.verify(token, ip)

    async def refused(self, token: str, ip: str = IP) -> ProxyError:
        with pytest.raises(ProxyError) as info:
            await self.verifier.verify(token, ip)
        return info.value

    async def settle(self) -> None:
        """Let background checks land."""
        await self.verifier.cache.idle()

    def skip_gate(self, seconds: float = 60.0) -> None:
        """Move the gate's clock past any pause (Retry-After, backoff)."""
        self.mono.skipped += seconds

    def background(self, trigger: str, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "authproxy_verify_background_total", {"trigger": trigger, "result": result}
        )
        return value or 0.0

    def cache_count(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "authproxy_verify_cache_total", {"result": result}
        )
        return value or 0.0


RigFactory = Callable[..., Awaitable[Rig]]


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
async def make_rig(aiohttp_server: AiohttpServer) -> AsyncIterator[RigFactory]:
    session = aiohttp.ClientSession()
    verifiers: list[ClerkVerifier] = []

    async def make(**over: Any) -> Rig:
        clock = Clock()
        clerk = ClerkEmulator(KEY, now=clock)
        server = await aiohttp_server(clerk.app)
        url = str(server.make_url("")).rstrip("/")
        raw = merge(
            {
                "upstream": {"url": "http://127.0.0.1:1"},
                "clerk": {"api_url": url, "secret_key": KEY, "timeout": 1},
                "cache": {"ttl_seconds": 60, "negative_ttl_seconds": 10},
                "verification_budget": {
                    "global": {"rate": 1, "burst": 1000},
                    "per_ip": {"rate": 1, "burst": 1000},
                },
            },
            over,
        )
        metrics, mono = Metrics(), Mono()
        verifier = ClerkVerifier(
            build_config(raw, file="test"), session, metrics, now=clock, monotonic=mono
        )
        await verifier.start()
        verifiers.append(verifier)
        return Rig(clerk, verifier, clock, metrics, url, mono)

    yield make
    for v in verifiers:
        await v.close()
    await session.close()


async def test_valid_m2m_token(make_rig: RigFactory) -> None:
    rig = await make_rig()
    api = rig.clerk.create_machine("scores-api")
    partner = rig.clerk.create_machine("partner", scoped_machines=[api.id])
    issued = rig.clerk.create_m2m_token(
        partner.id, claims={"tier": "gold"}, seconds_until_expiration=3600
    )
    p = await rig.verify(issued.secret)
    assert (p.type, p.id, p.token_type, p.token_id) == (
        "machine",
        partner.id,
        "m2m_token",
        issued.id,
    )
    assert api.id in p.scopes
    assert p.claims() == {"tier": "gold"}
    assert issued.expiration_ms is not None
    assert p.expires_at == pytest.approx(issued.expiration_ms / 1000)
    assert rig.calls() == 1


async def test_revoked_token_is_refused_once_its_entry_expires(make_rig: RigFactory) -> None:
    rig = await make_rig(cache={"ttl_seconds": 5})
    partner = rig.clerk.create_machine("partner")
    issued = rig.clerk.create_m2m_token(partner.id)
    await rig.verify(issued.secret)
    rig.clerk.revoke_m2m_token(issued.id, reason="leaked")
    rig.clock.t += 4.9
    assert (await rig.verify(issued.secret)).token_id == issued.id  # cached: ttl not over
    rig.clock.t += 0.2
    refusal = await rig.refused(issued.secret)
    assert (refusal.code, refusal.status) == (TOKEN_INVALID, 401)
    assert "revoked" in refusal.message
    # The refusal is negative-cached: no further Clerk call for negative_ttl_seconds.
    await rig.refused(issued.secret)
    assert rig.calls() == 2
    assert rig.cache_count("negative_hit") == 1


async def test_token_id_costs_no_clerk_call(make_rig: RigFactory) -> None:
    rig = await make_rig()
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    refusal = await rig.refused(issued.id)
    assert refusal.code == TOKEN_ID_NOT_SECRET
    assert "secret" in refusal.message
    assert sum(rig.clerk.calls.values()) == 0


async def test_tokens_of_another_instance_are_refused(make_rig: RigFactory) -> None:
    rig, other = await make_rig(), await make_rig()
    m2m = other.clerk.create_m2m_token(other.clerk.create_machine("partner").id)
    refusal = await rig.refused(m2m.secret)
    assert (refusal.status, refusal.code) == (401, TOKEN_INVALID)
    assert "scoped to one Clerk instance" in refusal.message
    session = other.clerk.mint_session_jwt("user_2abc")
    refusal = await rig.refused(session)
    assert refusal.status == 401
    assert other.calls() == 0


async def test_one_cold_token_a_thousand_callers_one_call(make_rig: RigFactory) -> None:
    rig = await make_rig()
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    results = await asyncio.gather(*(rig.verify(issued.secret) for _ in range(1000)))
    assert {p.token_id for p in results} == {issued.id}
    assert rig.calls() == 1


async def test_ten_thousand_sequential_one_call_per_ttl(make_rig: RigFactory) -> None:
    rig = await make_rig(cache={"ttl_seconds": 30})
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    for _ in range(10_000):
        await rig.verify(issued.secret)
    assert rig.calls() == 1
    assert rig.cache_count("hit") == 9_999
    rig.clock.t += 30
    await rig.verify(issued.secret)
    assert rig.calls() == 2


FAULTS: list[tuple[str, dict[str, Any], int | None]] = [
    ("down", {}, 2),
    ("error", {}, 2),
    ("slow", {"seconds": 0.5}, 2),
    ("rate_limit", {"retry_after": 7}, 7),
]


@pytest.mark.parametrize(("kind", "params", "retry_after"), FAULTS)
async def test_clerk_failures_are_503_and_not_cached(
    make_rig: RigFactory, kind: str, params: dict[str, Any], retry_after: int | None
) -> None:
    rig = await make_rig(clerk={"timeout": 0.1})
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    rig.clerk.set_fault(kind, **params)
    refusal = await rig.refused(issued.secret)
    assert (refusal.status, refusal.code, refusal.retry_after) == (
        503,
        VERIFICATION_UNAVAILABLE,
        retry_after,
    )
    assert refusal.headers()["Retry-After"] == str(retry_after)
    rig.clerk.clear_faults()
    calls = rig.calls()
    refusal = await rig.refused(issued.secret)  # the gate holds: no call while it pauses
    assert (refusal.code, rig.calls()) == (VERIFICATION_UNAVAILABLE, calls)
    rig.skip_gate()
    assert (await rig.verify(issued.secret)).token_id == issued.id  # nothing was cached


async def test_our_bad_key_is_503_not_401(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig()
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    rig.clerk.set_fault("unauthorized")
    refusal = await rig.refused(issued.secret)
    assert (refusal.status, refusal.code) == (503, VERIFICATION_UNAVAILABLE)
    assert any(
        r.levelno == logging.ERROR and "secret key" in r.getMessage() for r in caplog.records
    )


async def test_stale_if_error_rides_out_an_outage_until_the_token_expires(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(cache={"ttl_seconds": 10, "stale_if_error_seconds": 600})
    issued = rig.clerk.create_m2m_token(
        rig.clerk.create_machine("partner").id, seconds_until_expiration=120
    )
    created = rig.clock.t
    await rig.verify(issued.secret)
    rig.clerk.set_fault("down")
    for step in (15, 60, 119):
        rig.clock.t = created + step
        assert (await rig.verify(issued.secret)).token_id == issued.id
    assert rig.cache_count("stale") == 3
    rig.clock.t = created + 120.01  # the token's own expiry
    refusal = await rig.refused(issued.secret)
    assert refusal.code == VERIFICATION_UNAVAILABLE


async def test_random_tokens_cost_at_most_the_budget(make_rig: RigFactory) -> None:
    rig = await make_rig(
        verification_budget={
            "per_ip": {"rate": 1, "burst": 20},
            "global": {"rate": 50, "burst": 200},
        }
    )
    codes: dict[str, int] = {}
    for _ in range(5000):
        refusal = await rig.refused("mt_" + secrets.token_urlsafe(32).replace("-", "a"))
        codes[refusal.code] = codes.get(refusal.code, 0) + 1
    assert rig.calls() <= 20
    assert codes[VERIFICATION_BUDGET_EXCEEDED] >= 4980
    # Another address still gets its own share, a known token in the cache costs nothing.
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    assert (await rig.verify(issued.secret, ip="198.51.100.1")).token_id == issued.id


async def test_every_token_kind_is_verified(make_rig: RigFactory) -> None:
    rig = await make_rig()
    machine = rig.clerk.create_machine("partner")
    session = await rig.verify(rig.clerk.mint_session_jwt("user_2abc", sid="sess_2abc"))
    assert (session.type, session.id, session.token_type, session.token_id) == (
        "user",
        "user_2abc",
        "session_token",
        "sess_2abc",
    )
    m2m_jwt = await rig.verify(rig.clerk.mint_m2m_jwt(machine.id, claims={"scopes": "mch_api"}))
    assert (m2m_jwt.type, m2m_jwt.id, m2m_jwt.token_type) == ("machine", machine.id, "m2m_token")
    # The creator chose that claim: it travels as a claim, never as a scope.
    assert m2m_jwt.scopes == frozenset()
    assert m2m_jwt.claims() == {"scopes": "mch_api"}
    oauth = await rig.verify(
        rig.clerk.create_oauth_token("user_2abc", scopes=("profile", "email"), client_id="cl_9")
    )
    assert (oauth.type, oauth.id, oauth.token_type) == ("oauth", "user_2abc", "oauth_token")
    assert (oauth.scopes, oauth.client_id) == ({"profile", "email"}, "cl_9")
    oauth_jwt = await rig.verify(rig.clerk.mint_oauth_jwt("user_2abc", client_id="cl_8"))
    assert (oauth_jwt.type, oauth_jwt.client_id) == ("oauth", "cl_8")
    key = await rig.verify(rig.clerk.create_api_key("org_2abc", scopes=("scores:read",)))
    assert (key.type, key.id, key.token_type) == ("api_key", "org_2abc", "api_key")
    assert key.scopes == {"scores:read"}
    assert rig.calls("jwks") == 1
    assert rig.calls("oauth_verify") == 1
    assert rig.calls("api_key_verify") == 1


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], kid: str) -> str:
    head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{head}.{b64(json.dumps(claims).encode())}."


def hs256_with_public_key(claims: dict[str, Any], jwk: dict[str, Any]) -> str:
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
    assert isinstance(public, rsa.RSAPublicKey)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


async def test_bad_jwts_are_refused(make_rig: RigFactory) -> None:
    rig = await make_rig(clerk={"authorized_parties": ["https://app.example"]})
    now = rig.clock()
    good = {
        "sub": "user_2abc",
        "sid": "sess_1",
        "azp": "https://app.example",
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 60,
    }
    assert (await rig.verify(rig.clerk.mint_jwt(good))).id == "user_2abc"
    cases = [
        (unsigned(good, rig.clerk.kid), TOKEN_INVALID, "unsigned"),
        (hs256_with_public_key(good, rig.clerk.public_jwk), TOKEN_INVALID, "algorithm"),
        (
            rig.clerk.mint_jwt(good, {"kid": "ins_unknown"}),
            TOKEN_INVALID,
            "scoped to one Clerk instance",
        ),
        (rig.clerk.mint_jwt({**good, "exp": int(now) - 30}), TOKEN_EXPIRED, "expired"),
        (rig.clerk.mint_jwt({**good, "nbf": int(now) + 30}), TOKEN_INVALID, "not valid yet"),
        (rig.clerk.mint_session_jwt("user_2abc", azp="https://evil.example"), TOKEN_INVALID, "azp"),
        # Signed, but with a subject or session id that would inject header fields.
        (rig.clerk.mint_jwt({**good, "sub": "user_2abc\r\nX-Evil: 1"}), TOKEN_INVALID, "header"),
        (rig.clerk.mint_jwt({**good, "sid": "sess 1"}), TOKEN_INVALID, "header"),
    ]
    for token, code, message in cases:
        refusal = await rig.refused(token)
        assert (refusal.status, refusal.code) == (401, code), message
        assert message in refusal.message


async def test_no_token_in_logs_or_metrics(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = await make_rig(verification_budget={"per_ip": {"rate": 1, "burst": 3}})
    machine = rig.clerk.create_machine("partner")
    good = rig.clerk.create_m2m_token(machine.id)
    revoked = rig.clerk.create_m2m_token(machine.id)
    rig.clerk.revoke_m2m_token(revoked.id)
    session = rig.clerk.mint_session_jwt("user_2abc")
    tokens = [good.secret, revoked.secret, session, good.id, "mt_" + "x" * 40, "garbage.token.here"]
    for token in tokens:
        try:
            await rig.verify(token)
        except ProxyError as exc:
            assert token not in exc.message
    rig.clerk.set_fault("unauthorized")
    for token in [*tokens, "ak_" + "k" * 30]:
        try:
            await rig.verify(token, ip="192.0.2.99")
        except ProxyError as exc:
            assert token not in exc.message
    rendered = rig.metrics.render().decode()
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert caplog.records  # something was logged (the bad key ERROR at least)
    for token in tokens:
        assert token not in rendered
        assert token not in text
    assert KEY not in text


@pytest.mark.parametrize(
    ("kind", "claims", "expected"),
    [
        (
            TokenKind.SESSION_JWT,
            {"sub": "user_1", "sid": "sess_1", "jti": "j", "exp": 5, "o": {"id": "org_1"}},
            ("user", "user_1", "session_token", "sess_1", '{"o":{"id":"org_1"}}'),
        ),
        (
            TokenKind.SESSION_JWT,
            {"sub": "user_1", "jti": "j1", "exp": 5, "v": 2, "azp": "x"},
            ("user", "user_1", "session_token", "j1", None),
        ),
        (
            TokenKind.M2M_JWT,
            {"sub": "mch_1", "jti": "mt_1", "exp": 5, "scopes": "mch_a mch_b"},
            ("machine", "mch_1", "m2m_token", "mt_1", '{"scopes":"mch_a mch_b"}'),
        ),
        (
            TokenKind.OAUTH_JWT,
            {"sub": "user_1", "jti": "oat_1", "exp": 5, "scope": "a b", "tenant": "t"},
            ("oauth", "user_1", "oauth_token", "oat_1", '{"tenant":"t"}'),
        ),
    ],
)
def test_jwt_principal(kind: TokenKind, claims: dict[str, Any], expected: tuple[Any, ...]) -> None:
    p = jwt_principal(kind, claims)
    assert (p.type, p.id, p.token_type, p.token_id, p.claims_json) == expected
    assert p.expires_at == 5


@pytest.mark.parametrize(
    "claims",
    [{"scopes": "mch_a scores:admin"}, {"aud": ["scores:admin"]}, {"aud": "mch_a"}, {}],
)
def test_m2m_jwt_claims_never_become_scopes(claims: dict[str, Any]) -> None:
    # Clerk sets only iss, sub, exp, nbf, iat and jti on an M2M JWT: `scopes` and `aud`
    # are whatever its creator asked for, so they are claims, never scopes.
    principal = jwt_principal(TokenKind.M2M_JWT, {"sub": "mch_1", "exp": 5, **claims})
    assert principal.scopes == frozenset()
    assert principal.claims() == claims


async def test_an_instance_setting_is_not_the_callers_fault(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig()
    secret = rig.clerk.create_api_key("user_2abc", scopes=("scores:read",))
    rig.clerk.api_keys_enabled = False
    for attempt in (1, 2):
        refusal = await rig.refused(secret)
        assert (refusal.status, refusal.code) == (503, VERIFICATION_NOT_ENABLED)
        assert "api_keys_not_enabled" in refusal.message
        # Not negative-cached: every attempt asks Clerk again (once: a 422 is not retried).
        assert rig.calls("api_key_verify") == attempt
    assert rig.cache_count("negative_hit") == 0
    counted = rig.metrics.registry.get_sample_value(
        "authproxy_clerk_setting_refusals_total",
        {"endpoint": "api_key_verify", "code": "api_keys_not_enabled"},
    )
    assert counted == 2
    assert any(
        r.levelname == "ERROR" and "api_keys_not_enabled" in r.getMessage() for r in caplog.records
    )
    # Once the operator turns the setting on, the same key works at once.
    rig.clerk.api_keys_enabled = True
    assert (await rig.verify(secret)).scopes == {"scores:read"}


async def test_machine_secret_key_sees_only_tokens_scoped_to_its_machine(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig()
    api = rig.clerk.create_machine("scores-api")
    partner = rig.clerk.create_machine("partner", scoped_machines=[api.id])
    stranger = rig.clerk.create_machine("stranger")
    scoped = rig.clerk.create_m2m_token(partner.id)
    unscoped = rig.clerk.create_m2m_token(stranger.id)
    # A second verifier on the same emulator that uses the scores-api machine's key.
    cfg = build_config(
        {
            "upstream": {"url": "http://127.0.0.1:1"},
            "clerk": {"api_url": rig.url, "secret_key": KEY, "machine_secret_key": api.secret_key},
        },
        file="test",
    )
    async with aiohttp.ClientSession() as session:
        verifier = ClerkVerifier(cfg, session, Metrics(), now=rig.clock)
        assert (await verifier.verify(scoped.secret, IP)).id == partner.id
        with pytest.raises(ProxyError) as info:
            await verifier.verify(unscoped.secret, IP)
        await verifier.close()
    assert (info.value.status, info.value.code) == (401, TOKEN_INVALID)


@pytest.mark.parametrize(
    ("clerk", "clerk_code"),
    [
        ({"secret_key": "sk_test_wrong"}, "authentication_invalid"),
        ({"machine_secret_key": "ak_not_a_machine_of_this_instance"}, "machine_secret_key_invalid"),
    ],
)
async def test_a_wrong_proxy_key_is_503_and_logged(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture, clerk: dict[str, str], clerk_code: str
) -> None:
    rig = await make_rig(clerk=clerk)
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    refusal = await rig.refused(issued.secret)
    assert (refusal.status, refusal.code, refusal.retry_after) == (
        503,
        VERIFICATION_UNAVAILABLE,
        30,
    )
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert clerk_code in error.getMessage()
    assert rig.calls() == 1  # not retried: retrying with a wrong key cannot help
    rig.clock.t += 1
    await rig.refused(issued.secret)
    assert rig.calls() == 2  # and not cached


async def test_a_connection_memo_answers_its_repeated_token_without_hashing(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await make_rig(cache={"ttl_seconds": 30})
    machine = rig.clerk.create_machine("partner")
    first = rig.clerk.create_m2m_token(machine.id)
    second = rig.clerk.create_m2m_token(machine.id)
    recent = Recent()
    assert rig.verifier.cached(first.secret, recent) is None  # not verified yet: no memo
    assert recent.owner is None
    verified = await rig.verify(first.secret)
    assert rig.verifier.cached(first.secret, recent) == verified  # from the cache: memo set
    hits = rig.cache_count("hit")

    hashed: list[str] = []
    real_key = rig.verifier.cache.key
    monkeypatch.setattr(rig.verifier.cache, "key", lambda t: hashed.append(t) or real_key(t))
    for _ in range(3):
        assert rig.verifier.cached(first.secret, recent) == verified
    assert hashed == []  # answered by comparing strings
    assert rig.cache_count("hit") == hits + 3  # and still counted as cache hits

    await rig.verify(second.secret)
    assert rig.verifier.cached(second.secret, recent) is not None  # another token: the cache
    assert len(hashed) == 2  # (verify's lookup, then cached's)
    assert recent.token == second.secret

    rig.clock.t += 30  # the entry's own deadline ends the memo too
    assert rig.verifier.cached(second.secret, recent) is None
    assert rig.calls() == 2


async def test_a_memo_filled_by_another_verifier_is_ignored(make_rig: RigFactory) -> None:
    """A config reload builds a new verifier: a connection's memo from the old one must not
    answer for it."""
    old, new = await make_rig(), await make_rig()
    issued = old.clerk.create_m2m_token(old.clerk.create_machine("partner").id)
    await old.verify(issued.secret)
    recent = Recent()
    assert old.verifier.cached(issued.secret, recent) is not None
    assert new.verifier.cached(issued.secret, recent) is None


# --- known tokens never wait: refresh ahead, the stale window, budget by payer ----------


async def test_a_busy_token_is_refreshed_ahead_and_never_meets_a_miss(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(cache={"ttl_seconds": 10})  # refresh ahead 0.2: at 8-9 s
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    start = rig.clock.t
    for _ in range(600):  # a request every 0.1 s for a minute
        rig.clock.t += 0.1
        assert (await rig.verify(issued.secret)).token_id == issued.id
        await asyncio.sleep(0)  # let a background check land, as the event loop would
    await rig.settle()
    assert rig.cache_count("miss") == 1  # the first request only
    # One call per fresh period, each at 80-90 % of it (8-9 s, plus up to one 0.1 s step
    # to the next request): 60 s of them after the first.
    assert 1 + int(60 / 9.1) <= rig.calls() <= 1 + int(60 / 8)
    assert rig.background("ahead", "valid") == rig.calls() - 1
    assert rig.clock.t - start == pytest.approx(60)


async def test_a_quiet_token_is_not_refreshed(make_rig: RigFactory) -> None:
    rig = await make_rig(cache={"ttl_seconds": 10})
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    await rig.verify(issued.secret)
    rig.clock.t += 5
    await rig.verify(issued.secret)  # before the refresh point: nothing starts
    await rig.settle()
    assert rig.calls() == 1
    rig.clock.t += 6  # past the fresh period (no stale window): a plain miss
    await rig.verify(issued.secret)
    assert (rig.calls(), rig.cache_count("miss")) == (2, 2)


async def test_a_connection_memo_ends_at_the_refresh_point(make_rig: RigFactory) -> None:
    rig = await make_rig(cache={"ttl_seconds": 10})
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    await rig.verify(issued.secret)
    recent = Recent()
    assert rig.verifier.cached(issued.secret, recent) is not None
    assert 8.0 <= recent.fresh_until - rig.clock.t <= 9.0
    rig.clock.t = recent.fresh_until
    assert rig.verifier.cached(issued.secret, recent) is not None  # the cache answers
    await rig.settle()
    assert rig.calls() == 2  # and the refresh started from there


async def test_a_token_revoked_is_refused_within_one_ttl_of_the_revocation(
    make_rig: RigFactory,
) -> None:
    """Refresh ahead must not extend a revoked token's life: each check starts a new fresh
    period from the check, and a busy token is checked before its period ends."""
    ttl = 10.0
    rig = await make_rig(cache={"ttl_seconds": ttl, "stale_if_error_seconds": 60})
    machine = rig.clerk.create_machine("partner")
    for offset in (0.5, 3.0, 7.9, 8.7, 9.5):  # revoked at several points of a fresh period
        issued = rig.clerk.create_m2m_token(machine.id)
        await rig.verify(issued.secret)
        first_check = rig.clock.t
        revoked_at: float | None = None
        while True:
            rig.clock.t += 0.05
            if revoked_at is None and rig.clock.t >= first_check + ttl + offset:
                rig.clerk.revoke_m2m_token(issued.id)
                revoked_at = rig.clock.t
            try:
                await rig.verify(issued.secret)
            except ProxyError as refusal:
                assert refusal.code == TOKEN_INVALID
                break
            await asyncio.sleep(0)
        assert revoked_at is not None and rig.clock.t - revoked_at <= ttl


async def test_the_stale_window_answers_at_once_with_one_background_check(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(
        cache={"ttl_seconds": 10, "stale_if_error_seconds": 600}, clerk={"timeout": 5}
    )
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    await rig.verify(issued.secret)
    rig.clerk.set_fault("slow", seconds=0.5)
    rig.clock.t += 11  # stale now
    started = time.monotonic()
    results = [await rig.verify(issued.secret) for _ in range(100)]
    assert time.monotonic() - started < 0.4  # nobody waited for the slow Clerk
    assert {p.token_id for p in results} == {issued.id}
    assert rig.cache_count("stale") == 100
    await rig.settle()
    assert rig.calls() == 2  # the first verification and one background check
    assert rig.background("stale", "valid") == 1
    assert rig.verifier.cache.fresh(rig.verifier.cache.key(issued.secret)) is not None


async def test_a_background_check_that_finds_the_token_revoked_ends_it(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(cache={"ttl_seconds": 10, "stale_if_error_seconds": 600})
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    await rig.verify(issued.secret)
    rig.clerk.revoke_m2m_token(issued.id)
    rig.clock.t += 11
    assert (await rig.verify(issued.secret)).token_id == issued.id  # served while checking
    await rig.settle()
    refusal = await rig.refused(issued.secret)  # the next request is refused
    assert "revoked" in refusal.message
    assert rig.background("stale", "rejected") == 1


async def test_an_outage_costs_a_known_token_nothing_and_clerk_one_probe_per_pause(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(cache={"ttl_seconds": 10, "stale_if_error_seconds": 600})
    machine = rig.clerk.create_machine("partner")
    known = [rig.clerk.create_m2m_token(machine.id) for _ in range(20)]
    for issued in known:
        await rig.verify(issued.secret)
    rig.clerk.set_fault("down")
    before = rig.calls()
    for _ in range(30):  # 30 s of requests, stale after the first 10
        rig.clock.t += 1
        for issued in known:
            assert (await rig.verify(issued.secret)).token_id == issued.id
            await asyncio.sleep(0)
        await rig.settle()
    # Without the gate: a check per token per request in the window, each with a retry.
    # With it: the calls out when the outage began, then one probe per pause.
    assert rig.calls() - before <= 20 + 5
    assert rig.background("ahead", "deferred") + rig.background("stale", "deferred") > 0


async def test_retry_after_is_honoured_for_every_token_and_spends_no_budget(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(verification_budget={"global": {"rate": 1, "burst": 100}})
    machine = rig.clerk.create_machine("partner")
    rig.clerk.set_fault("rate_limit", retry_after=30)
    first = await rig.refused(rig.clerk.create_m2m_token(machine.id).secret)
    assert first.retry_after == 30
    for _ in range(50):
        refusal = await rig.refused(rig.clerk.create_m2m_token(machine.id).secret)
        assert refusal.code == VERIFICATION_UNAVAILABLE and 1 <= refusal.retry_after <= 33
    assert rig.calls() == 1
    assert rig.verifier.budget._global.tokens >= 98  # held calls spent nothing


async def test_a_known_token_is_never_refused_by_the_budget(make_rig: RigFactory) -> None:
    rig = await make_rig(
        cache={"ttl_seconds": 10},
        verification_budget={
            "global": {"rate": 0.5, "burst": 8},  # a reserve of 2 for known tokens
            "per_ip": {"rate": 100, "burst": 100},
        },
    )
    machine = rig.clerk.create_machine("partner")
    partner = rig.clerk.create_m2m_token(machine.id)
    await rig.verify(partner.secret, ip="192.0.2.1")
    # A flood of unknown tokens from other addresses takes what it may of the bucket.
    for i in range(100):
        with pytest.raises(ProxyError):
            await rig.verify("mt_" + secrets.token_hex(24), ip=f"198.51.100.{i}")
    assert rig.calls() == 1 + 5  # 8 less the reserve of 2, less the partner's own
    rig.clock.t += 9.0  # past the partner's refresh point (8-9 s), still fresh
    assert (await rig.verify(partner.secret, ip="192.0.2.1")).token_id == partner.id
    await rig.settle()
    assert rig.background("ahead", "valid") == 1  # paid from the reserve
    assert rig.calls() == 7


async def test_a_miss_waits_at_most_the_deadline_and_its_call_fills_the_cache(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(clerk={"miss_deadline": "100ms", "timeout": 5})
    issued = rig.clerk.create_m2m_token(rig.clerk.create_machine("partner").id)
    rig.clerk.set_fault("slow", seconds=0.5)
    started = time.monotonic()
    refusal = await rig.refused(issued.secret)
    assert time.monotonic() - started < 0.4
    assert (refusal.status, refusal.code, refusal.retry_after) == (503, VERIFICATION_UNAVAILABLE, 1)
    again = await rig.refused(issued.secret)  # joins the same call: still one
    assert again.code == VERIFICATION_UNAVAILABLE
    await rig.settle()
    rig.clerk.clear_faults()
    assert (await rig.verify(issued.secret)).token_id == issued.id
    assert rig.calls() == 1
    assert rig.metrics.registry.get_sample_value(
        "authproxy_verification_deadline_exceeded_total"
    ) == 2
    assert rig.metrics.registry.get_sample_value("authproxy_verification_deadline_seconds") == 0.1


async def test_a_fresh_jwt_whose_key_is_held_is_verified_without_yielding(
    make_rig: RigFactory,
) -> None:
    """Issue 27 point 6: a JWT miss that needs no I/O runs in the caller — no flight, no
    deadline timer, no waiter — so the whole miss ends in one step of its coroutine, and a
    concurrent miss of the same token (which could only start after it) finds its entry.
    The first JWT, whose key set is not held yet, waits for the fetch in a flight."""
    rig = await make_rig()
    first = rig.clerk.mint_session_jwt("user_2first", sid="sess_2first")
    assert (await rig.verify(first)).id == "user_2first"
    assert rig.calls("jwks") == 1
    token = rig.clerk.mint_session_jwt("user_2abc", sid="sess_2abc")
    step = rig.verifier.verify(token, IP)
    with pytest.raises(StopIteration) as done:
        step.send(None)
    assert done.value.value.id == "user_2abc"
    assert not rig.verifier.cache.in_flight(rig.verifier.cache.key(token))
    again = await asyncio.gather(*(rig.verify(token) for _ in range(3)))
    assert {p.id for p in again} == {"user_2abc"}
    assert (rig.cache_count("miss"), rig.cache_count("hit"), rig.cache_count("coalesced")) == (
        2,
        3,
        0,
    )
    # A refusal takes the same way and is not cached (a JWT's): each miss judges it again.
    expired = rig.clerk.mint_session_jwt("user_2old", expires_in=-600)
    for _ in range(2):
        step = rig.verifier.verify(expired, IP)
        with pytest.raises(ProxyError) as info:
            step.send(None)
        assert info.value.code == TOKEN_EXPIRED
    assert rig.cache_count("miss") == 4
    assert rig.calls("jwks") == 1
