"""Issue 26's rows on other issuers and Clerk's transport (6, 11, 12, 13, 14), each as the
attack or the operator's mistake that showed it, through the real proxy app behind its
own listener (both front doors where the row is about what a door answers) and the issuer
emulator on a real socket."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from proxy.config.load import ConfigError, load_config
from proxy.emulator.issuer_state import OPAQUE_PREFIX, _digest
from tests.support import config_dict, header_values
from tests.support_issuers import API, IssuerStack, authgear_entry, issuer_stack, token_for

__all__ = ["issuer_stack"]  # the fixture, used by name

BOTH_DOORS = pytest.mark.parametrize("front_door", ["fast", "aiohttp"], indirect=True)
# A door that gives no answer is a failure, not a five-minute wait for the client's timeout.
ANSWER_WITHIN = 10.0


async def answer(s: IssuerStack, token: str) -> tuple[int, dict[str, Any], Any]:
    return await asyncio.wait_for(s.get("/api/v1/matches", token), ANSWER_WITHIN)


async def machine_token(s: IssuerStack, client_id: str = "svc-a") -> str:
    emu = s.issuers["authgear"]
    client = emu.add_client(client_id, resources={API: ("scores:read",)})
    return await token_for(s.client, emu.issuer, client.client_id, client.client_secret)


def introspecting(url: str) -> dict[str, Any]:
    return {
        **authgear_entry(url),
        "introspection": {
            "client_id": "scores-api",
            "client_secret": "rs-secret",
            "token_prefix": OPAQUE_PREFIX,
        },
    }


async def opaque_token(s: IssuerStack, client_id: str = "svc-o") -> str:
    emu = s.issuers["authgear"]
    if "scores-api" not in emu.clients:
        emu.add_client("scores-api", resources={}, client_secret="rs-secret")
    client = emu.add_client(client_id, resources={API: ("scores:read",)}, token_format="opaque")
    return await token_for(s.client, emu.issuer, client.client_id, client.client_secret)


# -- row 6: a slow JWKS endpoint when the key set ages out ----------------------------


async def test_row6_known_kids_keep_verifying_while_one_refetch_runs(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack(
        {
            "authgear": lambda url: {
                **authgear_entry(url),
                "jwks_cache_seconds": 0.3,
                "jwks_min_refetch_seconds": 0.1,
            }
        }
    )
    emu = s.issuers["authgear"]
    assert (await s.get("/api/v1/matches", await machine_token(s)))[0] == 200
    fresh = [await machine_token(s, f"svc-{i}") for i in range(10)]  # same kid, never seen
    await asyncio.sleep(0.35)  # the set has aged out
    emu.set_fault("slow", seconds=3, endpoints=["jwks"])  # longer than the miss deadline
    answers = await asyncio.gather(*(s.get("/api/v1/matches", t) for t in fresh))
    assert [a[0] for a in answers] == [200] * 10
    assert emu.calls["jwks"] == 2  # the first fetch, and the one background refetch
    # A kid the held set does not know waits for that same refetch, bounded by the
    # miss deadline (1 s): the refetch takes 3 s, so it is a 503, and no second fetch.
    emu.rotate_key()
    rotated = await machine_token(s, "svc-rotated")
    status, headers, body = await s.get("/api/v1/matches", rotated)
    assert (status, body["error"]["code"]) == (503, "verification_unavailable")
    assert "Retry-After" in headers
    assert emu.calls["jwks"] == 2


# -- row 11: NumericDate out of range, NaN and Infinity ---------------------------------


def _raw_jwt(s: IssuerStack, payload: bytes) -> str:
    """A JWT whose payload is exactly `payload` (numbers json.dumps cannot write)."""
    key = s.issuers["authgear"].active
    return jwt.api_jws.encode(
        payload, key.private_key, key.algorithm, headers={"typ": "at+jwt", "kid": key.kid}
    )


def _claims(s: IssuerStack, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": s.issuers["authgear"].issuer,
        "aud": API,
        "iat": now,
        "exp": now + 300,
        "client_id": "svc-a",
        "sub": "client_id_svc-a",
        "jti": "j" * 32,
    }
    return {**base, **over}


@BOTH_DOORS
@pytest.mark.parametrize(
    "bad",
    [
        {"exp": 10**400},
        {"nbf": 10**400},
        {"iat": -(10**400)},
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"nbf": float("-inf")},
        {"exp": 1e300},
        {"scope": float("nan")},  # not a date, still not JSON
    ],
    ids=["exp-1e400", "nbf-1e400", "iat-minus-1e400", "exp-nan", "exp-inf", "nbf-minus-inf",
         "exp-1e300", "scope-nan"],
)
async def test_row11_dates_must_be_finite_json_numbers_in_range(
    issuer_stack: Any, bad: dict[str, Any]
) -> None:
    s: IssuerStack = await issuer_stack()
    token = s.issuers["authgear"].mint(_claims(s, **bad))
    status, _, body = await answer(s, token)
    assert (status, body["error"]["code"]) == (401, "token_invalid"), body
    # Refused as this issuer's token, for what it is (not as a stranger's, nor Clerk's).
    assert any(why in body["error"]["message"] for why in ("is not a date", "NaN")), body
    assert s.recorder.seen == []


@BOTH_DOORS
async def test_row11_a_literal_1e400_is_no_date_either(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack()
    claims = json.dumps(_claims(s, exp=0)).replace('"exp": 0', '"exp": 1e400')
    status, _, body = await answer(s, _raw_jwt(s, claims.encode()))
    assert (status, body["error"]["code"]) == (401, "token_invalid"), body


@BOTH_DOORS
@pytest.mark.parametrize("exp", [10**400, float("nan"), float("inf")], ids=["1e400", "nan", "inf"])
async def test_row11_an_introspection_answer_with_no_date_is_the_issuers_fault(
    issuer_stack: Any, exp: float
) -> None:
    s: IssuerStack = await issuer_stack({"authgear": introspecting})
    token = await opaque_token(s)
    s.issuers["authgear"].opaque[_digest(token)]["exp"] = exp
    status, _, body = await answer(s, token)
    assert (status, body["error"]["code"]) == (503, "verification_unavailable"), body
    assert s.recorder.seen == []


# -- row 12: an introspected client-credentials token without `sub` ----------------------


async def test_row12_an_opaque_token_without_sub_is_the_clients_machine(
    issuer_stack: Any,
) -> None:
    """oidc-provider's answer for a client's own token: client_id, no sub (RFC 7662 makes
    it optional). The default preset (rfc9068) maps it to the client's machine."""
    s: IssuerStack = await issuer_stack(
        {"authgear": lambda url: {**introspecting(url), "preset": "rfc9068"}}
    )
    token = await opaque_token(s)
    del s.issuers["authgear"].opaque[_digest(token)]["sub"]
    status, _, body = await s.get("/api/v1/matches", token)
    assert status == 200, body
    seen = s.recorder.last.headers
    assert header_values(seen, "X-Auth-Principal-Type") == ["machine"]
    assert header_values(seen, "X-Auth-Principal-Id") == ["svc-o"]
    assert header_values(seen, "X-Auth-Scopes") == ["scores:read"]


async def test_row12_a_user_token_stays_the_users(issuer_stack: Any) -> None:
    """The same client acting for a user: its answer names the user in `sub`."""
    s: IssuerStack = await issuer_stack(
        {"authgear": lambda url: {**introspecting(url), "preset": "rfc9068"}}
    )
    token = await opaque_token(s)
    s.issuers["authgear"].opaque[_digest(token)]["sub"] = "user-42"
    status, _, body = await s.get("/api/v1/matches", token)
    assert status == 200, body
    seen = s.recorder.last.headers
    assert header_values(seen, "X-Auth-Principal-Type") == ["oauth"]
    assert header_values(seen, "X-Auth-Principal-Id") == ["user-42"]


# -- row 13: issuer calls through the gate -------------------------------------------------


async def test_row13_wrong_introspection_credentials_cost_one_call_per_pause(
    issuer_stack: Any, caplog: Any
) -> None:
    s: IssuerStack = await issuer_stack({"authgear": introspecting})
    tokens = [await opaque_token(s, f"svc-{i}") for i in range(10)]
    emu = s.issuers["authgear"]
    emu.clients["scores-api"].client_secret = "rotated"
    with caplog.at_level(logging.ERROR, logger="proxy.introspection"):
        answers = [await s.get("/api/v1/matches", t) for t in tokens]
    assert {(a[0], a[2]["error"]["code"]) for a in answers} == {(503, "verification_unavailable")}
    assert all(20 <= int(a[1]["Retry-After"]) <= 33 for a in answers)
    assert emu.calls["introspect"] == 1
    assert caplog.text.count("refused the proxy's introspection credentials") == 1


async def test_row13_an_issuers_retry_after_holds_every_call(issuer_stack: Any) -> None:
    s: IssuerStack = await issuer_stack({"authgear": introspecting})
    tokens = [await opaque_token(s, f"svc-{i}") for i in range(5)]
    emu = s.issuers["authgear"]
    emu.set_fault("rate_limit", retry_after=20, endpoints=["introspect"])
    answers = [await s.get("/api/v1/matches", t) for t in tokens]
    assert {a[0] for a in answers} == {503}
    assert all(int(a[1]["Retry-After"]) >= 20 for a in answers)
    assert emu.calls["introspect"] == 1
    assert 'authproxy_issuer_calls_held_total{issuer="authgear",reason="retry_after"} 4.0' in (
        s.metrics()
    )


# -- row 14: Clerk's API over plain http ---------------------------------------------------


@pytest.mark.parametrize("environment", ["production", "staging", "local"])
def test_row14_clerk_api_url_must_be_https_off_loopback(environment: str, tmp_path: Path) -> None:
    """As `check-config` reads it: a file, the key from the environment."""
    key = "sk_test_example" if environment == "local" else "sk_live_example"
    env = {"CLERK_SECRET_KEY": key}

    def load(api_url: str) -> Any:
        raw = config_dict(environment=environment)
        raw["clerk"] = {"api_url": api_url, "secret_key": "${CLERK_SECRET_KEY}"}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_config(path, env=env)

    with pytest.raises(ConfigError) as info:
        load("http://clerk.internal.example")
    assert "clerk.api_url" in str(info.value) and "https is required" in str(info.value)
    assert key not in str(info.value)
    assert load("http://127.0.0.1:3100").clerk.api_url == "http://127.0.0.1:3100"  # the emulator
    assert load("https://api.clerk.com/").clerk.api_url == "https://api.clerk.com"
