"""Clerk's own clients against the Clerk emulator: `@clerk/backend` (JS, pinned in
tests/node/package.json) and `clerk-backend-api` (Python, the test extra). Every answer the
emulator gives them is recorded and checked against its schema in Clerk's published spec
(the pinned excerpt in tests/clerk_openapi/), judged by `openapi-schema-validator`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from proxy.emulator.app import ClerkEmulator
from proxy.emulator.state import Machine

KEY = "sk_test_sdks"
NODE_DIR = Path(__file__).parent / "node"
needs_js_sdk = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@clerk" / "backend").is_dir(),
    reason="node or tests/node/node_modules missing (run `make test`, which runs npm ci)",
)
SPEC = json.loads((Path(__file__).parent / "clerk_openapi" / "bapi-2026-05-12.excerpt.json").read_text())
# The excerpt as one resource, so the `#/components/...` references inside resolve.
SPEC_URI = "urn:clerk-bapi-2026-05-12"
REGISTRY = Registry().with_resource(
    SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT4)
)


def response_schema(method: str, path: str, status: int) -> OAS30Validator:
    """The validator of one documented answer; KeyError when the status is not documented."""
    pointer = ["paths", path, method.lower(), "responses", str(status)]
    response = SPEC
    for part in pointer:
        response = response[part]
    if "$ref" in response:  # a shared answer: `#/components/responses/...`
        pointer = response["$ref"].removeprefix("#/").split("/")
    escaped = [p.replace("~", "~0").replace("/", "~1") for p in pointer]
    ref = "/".join([*escaped, "content", "application~1json", "schema"])
    return OAS30Validator({"$ref": f"{SPEC_URI}#/{ref}"}, registry=REGISTRY)


def errors(validator: OAS30Validator, value: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(value)]


@dataclass
class Exchange:
    method: str
    operation: str  # the spec's path template
    status: int
    content_type: str
    body: Any


@dataclass
class Rig:
    emulator: ClerkEmulator
    url: str
    api: Machine
    partner: Machine
    seen: list[Exchange] = field(default_factory=list)

    def check_answers(self) -> list[str]:
        """Every recorded answer against the spec: exact content type, a documented status
        for successes, the schema of that status (an undocumented error status: Clerk's
        error envelope, the shape every documented error of these routes has)."""
        problems = []
        for ex in self.seen:
            where = f"{ex.method} {ex.operation} {ex.status}"
            if ex.content_type != "application/json":
                problems.append(f"{where}: Content-Type {ex.content_type!r}")
            try:
                schema = response_schema(ex.method, ex.operation, ex.status)
            except KeyError:
                if ex.status < 400:
                    problems.append(f"{where}: status not in the spec")
                    continue
                schema = ERROR_ENVELOPE
            problems += [f"{where}: {e}" for e in errors(schema, ex.body)]
        return problems


ERROR_ENVELOPE = response_schema("POST", "/m2m_tokens/verify", 404)


def _operation(request: web.Request) -> str:
    canonical = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else ""
    )
    path = canonical.removeprefix("/v1")
    return path.replace("{token_id}", "{m2m_token_id}")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    emulator = ClerkEmulator(KEY)
    seen: list[Exchange] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if not request.path.startswith("/__emulator") and isinstance(response, web.Response):
            assert response.body is not None
            seen.append(
                Exchange(
                    request.method,
                    _operation(request),
                    response.status,
                    response.headers.get("Content-Type", ""),
                    json.loads(bytes(response.body)),  # type: ignore[arg-type]
                )
            )
        return response

    emulator.app.middlewares.append(record)
    runner = web.AppRunner(emulator.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    api = emulator.create_machine("scores-api")
    partner = emulator.create_machine("scores-partner", scoped_machines=[api.id])
    yield Rig(emulator, f"http://127.0.0.1:{port}", api, partner, seen)
    await runner.cleanup()


async def node(script: str, payload: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / script),
        cwd=NODE_DIR,
        # No telemetry banner on stdout (and nothing sent anywhere: loopback only here).
        env={**os.environ, "CLERK_TELEMETRY_DISABLED": "1"},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(payload).encode()), 120)
    assert proc.returncode == 0 and out, (out[:2000], err.decode()[-3000:])
    try:
        return dict(json.loads(out))
    except ValueError:
        raise AssertionError((out[:3000], err.decode()[-3000:])) from None


@needs_js_sdk
async def test_clerks_js_sdk_against_the_emulator(rig: Rig) -> None:
    e = rig.emulator
    api_key = e.create_api_key("user_" + "2" * 27, scopes=("scores:read",), claims={"plan": "pro"})
    oauth = e.create_oauth_token("user_" + "3" * 27, scopes=("scores:read",), client_id="client_1")
    oauth_jwt = e.mint_oauth_jwt("user_" + "4" * 27, scopes=("scores:read",), client_id="client_2")
    session = e.mint_session_jwt("user_" + "5" * 27)
    out = await node(
        "clerk_sdk_suite.js",
        {
            "apiUrl": rig.url,
            "secretKey": KEY,
            "partnerKey": rig.partner.secret_key,
            "partnerId": rig.partner.id,
            "apiMachineKey": rig.api.secret_key,
            "apiMachineId": rig.api.id,
            "apiKey": api_key,
            "oauthToken": oauth,
            "oauthJwt": oauth_jwt,
            "sessionJwt": session,
        },
    )
    failed = {k: v for k, v in out.items() if not v["ok"]}
    # What Clerk refuses, and the emulator with it.
    assert failed.pop("m2m.createToken.instanceKey")["status"] == 401  # machine key only
    assert failed.pop("m2m.verify.partnerKey")["status"] == 404  # not scoped to itself
    assert failed.pop("apiKeys.verify.unknown")["status"] == 404
    assert failed == {}, failed
    value = {k: v["value"] for k, v in out.items() if v["ok"]}

    created = value["m2m.createToken"]
    assert (created["subject"], created["scopes"], created["claims"]) == (
        rig.partner.id,
        [rig.api.id],
        {"tier": "gold"},
    )
    assert created["token"].startswith("mt_") and created["expiration"] is not None
    for step in ("m2m.verify.instanceKey", "m2m.verify.apiMachineKey"):
        assert value[step]["id"] == created["id"] and value[step]["revoked"] is False
    jwt_token = value["m2m.createToken.jwt"]
    verified_jwt = value["m2m.verify.jwt"]  # verified locally by the SDK, keys from /v1/jwks
    assert (verified_jwt["subject"], verified_jwt["claims"], verified_jwt["scopes"]) == (
        rig.partner.id,
        {"tier": "gold"},
        [],  # no `scopes` claim: Clerk adds none
    )
    assert verified_jwt["id"] == jwt_token["id"]
    assert value["m2m.list"]["totalCount"] == 1  # the JWT-format token is not stored
    assert [t["id"] for t in value["m2m.list"]["data"]] == [created["id"]]
    assert value["m2m.list.partnerKey"]["totalCount"] == 1
    revoked = value["m2m.revokeToken"]
    assert (revoked["revoked"], revoked["revocationReason"]) == (True, "rotated")
    assert value["m2m.verify.revoked"]["revoked"] is True  # 200 with the flag, as Clerk
    listed_revoked = value["m2m.list.revoked"]
    assert [(t["id"], t["revoked"]) for t in listed_revoked["data"]] == [(created["id"], True)]
    key = value["apiKeys.verify"]
    assert (key["subject"], key["scopes"], key["claims"]) == (
        "user_" + "2" * 27,
        ["scores:read"],
        {"plan": "pro"},
    )
    assert value["idPOAuthAccessToken.verify"]["clientId"] == "client_1"
    assert value["jwks.getJwks"]["keys"][0]["kid"] == e.kid

    expected = {
        "authenticateRequest.m2m": ("m2m_token", rig.partner.id),
        "authenticateRequest.m2m_jwt": ("m2m_token", rig.partner.id),
        "authenticateRequest.api_key": ("api_key", "user_" + "2" * 27),
        "authenticateRequest.any.api_key": ("api_key", "user_" + "2" * 27),
        "authenticateRequest.oauth": ("oauth_token", "user_" + "3" * 27),
        "authenticateRequest.oauth_jwt": ("oauth_token", "user_" + "4" * 27),
        "authenticateRequest.session": ("session_token", "user_" + "5" * 27),
    }
    for step, (token_type, subject) in expected.items():
        state = value[step]
        assert (state["isAuthenticated"], state["tokenType"], state["subject"]) == (
            True,
            token_type,
            subject,
        ), (step, state)
    assert value["authenticateRequest.oauth"]["clientId"] == "client_1"
    assert value["authenticateRequest.oauth_jwt"]["clientId"] == "client_2"
    # Every answer of the run, against Clerk's spec.
    assert {ex.operation for ex in rig.seen} >= {
        "/m2m_tokens",
        "/m2m_tokens/verify",
        "/m2m_tokens/{m2m_token_id}/revoke",
        "/api_keys/verify",
        "/oauth_applications/access_tokens/verify",
        "/jwks",
    }
    assert rig.check_answers() == []


async def test_clerks_python_sdk_against_the_emulator(rig: Rig) -> None:
    from clerk_backend_api import Clerk
    from clerk_backend_api.models import ClerkBaseError
    from clerk_backend_api.security import authenticate_request_async, verify_token_async
    from clerk_backend_api.security.types import (
        AuthenticateRequestOptions,
        AuthStatus,
        TokenVerificationError,
        VerifyTokenOptions,
    )

    e = rig.emulator
    server = rig.url + "/v1"
    async with Clerk(bearer_auth=rig.partner.secret_key, server_url=server) as partner:
        created = await partner.m2m.create_token_async(
            seconds_until_expiration=3600, claims={"tier": "gold"}
        )
        jwt_created = await partner.m2m.create_token_async(token_format="jwt")
    assert (created.subject, created.scopes, created.claims) == (
        rig.partner.id,
        [rig.api.id],
        {"tier": "gold"},
    )
    assert jwt_created.token.count(".") == 2
    async with Clerk(bearer_auth=KEY, server_url=server) as instance:
        verified = await instance.m2m.verify_token_async(token=created.token)
        assert (verified.id, verified.revoked) == (created.id, False)
        listed = await instance.m2m.list_tokens_async(subject=rig.partner.id)
        assert [t.id for t in listed.m2m_tokens] == [created.id]
        revoked = await instance.m2m.revoke_token_async(
            m2m_token_id=created.id, revocation_reason="rotated"
        )
        assert (revoked.revoked, revoked.revocation_reason) == (True, "rotated")
        with pytest.raises(ClerkBaseError) as refused:
            await instance.m2m.create_token_async()  # machine key only
        assert refused.value.status_code == 401
        api_key = e.create_api_key("org_" + "2" * 27, scopes=("scores:read",))
        key = await instance.api_keys.verify_api_key_async(secret=api_key)
        assert (key.subject, key.scopes) == ("org_" + "2" * 27, ["scores:read"])
        oauth = e.create_oauth_token("user_" + "3" * 27, scopes=("a",), client_id="client_1")
        by_new_name = await instance.oauth_access_tokens.verify_async(access_token=oauth)
        by_old_name = await instance.oauth_access_tokens.verify_async(secret=oauth)
        for answer in (by_new_name, by_old_name):
            assert answer.client_id == "client_1"  # type: ignore[union-attr]
        jwks = await instance.jwks.get_jwks_async()
        assert jwks.keys is not None and jwks.keys[0].kid == e.kid  # type: ignore[union-attr]

    # The SDK's token helpers (security/verifytoken.py).
    options = VerifyTokenOptions(secret_key=KEY, api_url=rig.url)
    session = e.mint_session_jwt("user_" + "5" * 27)
    assert (await verify_token_async(session, options))["sub"] == "user_" + "5" * 27
    assert (await verify_token_async(api_key, options))["subject"] == "org_" + "2" * 27
    assert (await verify_token_async(oauth, options))["client_id"] == "client_1"
    # It posts {"secret": …} to /m2m_tokens/verify, which the spec does not take ({"token"}
    # only, additionalProperties: false): refused here as by Clerk (docs/emulator.md).
    fresh = e.create_m2m_token(rig.partner.id)
    with pytest.raises(TokenVerificationError):
        await verify_token_async(fresh.secret, options)
    pem = (
        e.private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    @dataclass
    class Request:
        headers: dict[str, str]

    auth = AuthenticateRequestOptions(
        jwt_key=pem, authorized_parties=["http://localhost:3000"], accepts_token=["session_token"]
    )
    state = await authenticate_request_async(Request({"Authorization": f"Bearer {session}"}), auth)
    assert (state.status, state.payload["sub"]) == (AuthStatus.SIGNED_IN, "user_" + "5" * 27)
    elsewhere = e.mint_session_jwt("user_" + "5" * 27, azp="https://evil.example")
    state = await authenticate_request_async(
        Request({"Authorization": f"Bearer {elsewhere}"}), auth
    )
    assert state.status == AuthStatus.SIGNED_OUT
    assert rig.check_answers() == []


def test_the_validator_finds_what_the_issue_found() -> None:
    """The validator is only as good as what it refuses: the emulator's old answers."""
    verify = response_schema("POST", "/oauth_applications/access_tokens/verify", 200)
    good = {
        "object": "clerk_idp_oauth_access_token",
        "id": "oat_" + "0" * 32,
        "client_id": "client_1",
        "subject": "user_" + "1" * 27,
        "scopes": ["a"],
        "revoked": False,
        "revocation_reason": None,
        "expired": False,
        "expiration": None,
        "created_at": 1,
        "updated_at": 1,
    }
    assert errors(verify, good) == []
    assert errors(verify, {"active": False}) == []
    assert errors(verify, {**good, "claims": None, "last_used_at": None})
    assert errors(verify, {**good, "id": "oat_" + "x" * 27})
    assert errors(verify, {"active": True})
    create = response_schema("POST", "/m2m_tokens", 201)
    assert errors(create, {"object": "machine_to_machine_token"})
    with pytest.raises(KeyError):
        response_schema("POST", "/m2m_tokens", 200)
