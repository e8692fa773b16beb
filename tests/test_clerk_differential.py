"""The differential table: crafted JWTs, signed with the emulated instance's key, each judged
by the proxy's verifier and by Clerk's JS SDK (@clerk/backend's `authenticateRequest` with
`acceptsToken: "any"`, then `toAuth()`, and `verifyToken`). They must agree row by row —
accepted as the same kind of token for the same subject, or both refused — except where a
row says the proxy is stricter, each such row documented in docs/verification.md."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.auth.verifier import ClerkVerifier
from proxy.config.load import build_config
from proxy.core.errors import ProxyError
from proxy.core.principal import Principal
from proxy.emulator.app import ClerkEmulator
from proxy.emulator.state import M2M_JWT_CAT, SESSION_JWT_CAT
from proxy.observe.metrics import Metrics
from tests.test_clerk_sdks import NODE_DIR, node

KEY = "sk_test_differential"
APP = "https://app.example"
TEMPLATE_CAT, IGNORE_CAT = "cl_B7d4PD222AAA", "cl_I7d4PD111III"
USER, MACHINE = "user_" + "2" * 27, "mch_" + "3" * 27
ABSENT: Any = object()

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@clerk" / "backend").is_dir(),
    reason="node or tests/node/node_modules missing (run `make test`, which runs npm ci)",
)


@dataclass(frozen=True)
class Row:
    name: str
    header: dict[str, Any]
    claims: dict[str, Any]
    # "session_token", "m2m_token", "oauth_token" (accepted as that) or None (refused).
    verdict: str | None
    # Set when the proxy refuses what Clerk's SDK accepts: why (docs/verification.md).
    stricter: str = ""
    parties: bool = False  # judged with authorized parties [APP] configured
    sign: str = "instance"  # instance | foreign (another instance's key) | none | hs256
    scopes: frozenset[str] | None = None  # the proxy's scopes for an accepted row
    clerk_scopes: frozenset[str] | None = field(default=None)


def session(**over: Any) -> dict[str, Any]:
    return {"sub": USER, "sid": "sess_" + "1" * 27, "azp": APP, "v": 2, **over}


def m2m(**over: Any) -> dict[str, Any]:
    return {"sub": MACHINE, "jti": "mt_" + "a" * 32, **over}


def oauth(**over: Any) -> dict[str, Any]:
    return {"sub": USER, "client_id": "client_1", "jti": "oat_" + "b" * 32, "scope": "read", **over}


S, M, OA = {"cat": SESSION_JWT_CAT}, {"cat": M2M_JWT_CAT}, {"typ": "at+jwt"}
ROWS = [
    # Session tokens.
    Row("session", S, session(), "session_token"),
    Row("session-no-cat", {}, session(), "session_token"),
    Row("session-ignore-cat", {"cat": IGNORE_CAT}, session(), "session_token"),
    Row("session-no-typ", {**S, "typ": ABSENT}, session(), "session_token"),
    Row("session-rs384-rs256-key", {**S, "alg": "RS384"}, session(), None),  # the JWK says RS256
    Row("session-typ-foo", {**S, "typ": "foo"}, session(), None),
    Row("session-typ-lowercase", {**S, "typ": "jwt"}, session(), None),
    Row("session-typ-null", {**S, "typ": None}, session(), None),
    Row("jwt-template-cat", {"cat": TEMPLATE_CAT}, session(), None),
    Row("unknown-cat", {"cat": "cl_Z9z9ZZ999ZZZ"}, session(), None),
    Row("m2m-cat-user-sub", M, session(), None),
    Row("sts-pending", S, session(sts="pending"), None),
    Row("sts-active", S, session(sts="active"), "session_token"),
    Row("session-no-sub", S, session(sub=ABSENT), None),
    Row("session-sub-number", S, session(sub=42), None),
    Row("session-sub-empty", S, session(sub=""), None, stricter="an empty sub names nobody"),
    Row("session-expired", S, session(exp=-30), None),
    Row("session-expired-within-skew", S, session(exp=-3), "session_token"),
    Row("session-nbf-future", S, session(nbf=30), None),
    Row("session-iat-future", S, session(iat=30), None),
    Row("session-no-exp", S, session(exp=ABSENT), None),
    Row("session-foreign-key", S, session(), None, sign="foreign"),
    Row("session-unknown-kid", {**S, "kid": "ins_unknown"}, session(), None),
    Row("session-alg-none", {**S, "alg": "none"}, session(), None, sign="none"),
    Row("session-hs256-public-key", {**S, "alg": "HS256"}, session(), None, sign="hs256"),
    Row("session-azp-listed", S, session(), "session_token", parties=True),
    Row("session-no-azp", S, session(azp=ABSENT), None, parties=True),
    Row("session-azp-other", S, session(azp="https://evil.example"), None, parties=True),
    # JWT-format M2M tokens.
    Row("m2m", M, m2m(), "m2m_token", scopes=frozenset(), clerk_scopes=frozenset()),
    Row("m2m-no-cat", {}, m2m(), "m2m_token"),
    Row("m2m-session-cat", S, m2m(), None),
    Row("m2m-ignore-cat", {"cat": IGNORE_CAT}, m2m(), None),
    Row("m2m-template-cat", {"cat": TEMPLATE_CAT}, m2m(), None),
    Row("m2m-typ-at+jwt", {**M, "typ": "at+jwt"}, m2m(), None),
    Row("m2m-expired", M, m2m(exp=-30), None),
    Row("m2m-no-azp-with-parties", M, m2m(), "m2m_token", parties=True),
    # The creator's `scopes`/`aud`: Clerk's SDK reports them as the token's scopes; the
    # proxy never lets them authorize (they travel as claims).
    Row(
        "m2m-creator-scopes",
        M,
        m2m(scopes="scores:admin", aud=["scores:admin"]),
        "m2m_token",
        scopes=frozenset(),
        clerk_scopes=frozenset({"scores:admin"}),
    ),
    # OAuth JWT access tokens.
    Row("oauth", OA, oauth(), "oauth_token", scopes=frozenset({"read"})),
    Row("oauth-application-at+jwt", {"typ": "application/at+jwt"}, oauth(), "oauth_token"),
    Row(
        "oauth-scp-before-scope",
        OA,
        oauth(scp=["write"], scope="admin"),
        "oauth_token",
        scopes=frozenset({"write"}),
        clerk_scopes=frozenset({"write"}),
    ),
    Row("oauth-expired", OA, oauth(exp=-30), None),
    Row("oauth-no-sub", OA, oauth(sub=ABSENT), None),
    Row("oauth-no-azp-with-parties", OA, oauth(), "oauth_token", parties=True),
    Row(
        "oauth-m2m-cat",
        {**OA, **M},
        oauth(),
        None,
        stricter="an OAuth JWT carrying the M2M category is another class's token",
    ),
]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(emu: ClerkEmulator, foreign: rsa.RSAPrivateKey, row: Row, now: int) -> str:
    header: dict[str, Any] = {"alg": "RS256", "kid": emu.kid, "typ": "JWT"}
    header.update(row.header)
    times = {"iat": now, "nbf": now, "exp": now + 60}
    claims = {"iss": emu.issuer, **times, **row.claims}
    for name in ("exp", "nbf", "iat"):  # relative seconds in the table
        if isinstance(row.claims.get(name), int):
            claims[name] = now + row.claims[name]
    header = {k: v for k, v in header.items() if v is not ABSENT}
    claims = {k: v for k, v in claims.items() if v is not ABSENT}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if row.sign == "none":
        return signing + "."
    if row.sign == "hs256":
        alg = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
        secret = json.dumps(emu.public_jwk).encode()
        return signing + "." + _b64(alg.sign(signing.encode(), secret))
    key = foreign if row.sign == "foreign" else emu.private_key
    hashes = {"RS256": "SHA256", "RS384": "SHA384", "RS512": "SHA512"}
    rsa_alg = jwt.algorithms.RSAAlgorithm(
        getattr(jwt.algorithms.RSAAlgorithm, hashes[header["alg"]])
    )
    return signing + "." + _b64(rsa_alg.sign(signing.encode(), key))


@dataclass
class Judged:
    verdict: str | None
    subject: str | None
    scopes: frozenset[str] | None
    detail: str


@pytest.fixture
async def served() -> AsyncIterator[tuple[ClerkEmulator, str]]:
    emu = ClerkEmulator(KEY)
    runner = web.AppRunner(emu.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield emu, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def judge_by_proxy(url: str, parties: bool, tokens: dict[str, str]) -> dict[str, Judged]:
    clerk: dict[str, Any] = {"api_url": url, "secret_key": KEY}
    if parties:
        clerk["authorized_parties"] = [APP]
    config = build_config(
        {"upstream": {"url": "http://127.0.0.1:1"}, "clerk": clerk}, file="d"
    )
    out: dict[str, Judged] = {}
    async with aiohttp.ClientSession() as session:
        verifier = ClerkVerifier(config, session, Metrics())
        for name, token in tokens.items():
            try:
                p: Principal = await verifier.verify(token, "127.0.0.1")
            except ProxyError as exc:
                out[name] = Judged(None, None, None, f"{exc.code}: {exc.message}")
                continue
            out[name] = Judged(p.token_type, p.id, p.scopes, "")
        await verifier.close()
    return out


async def judge_by_clerk(url: str, parties: bool, tokens: dict[str, str]) -> dict[str, Judged]:
    answers = await node(
        "clerk_judge.js",
        {
            "apiUrl": url,
            "secretKey": KEY,
            "authorizedParties": [APP] if parties else None,
            "tokens": tokens,
        },
    )
    out = {}
    for name, answer in answers.items():
        any_ = answer["any"]
        if any_.get("authenticated"):
            scopes = any_.get("scopes")
            out[name] = Judged(
                any_["tokenType"],
                any_["subject"],
                None if scopes is None else frozenset(scopes),
                json.dumps(answer),
            )
        else:
            out[name] = Judged(None, None, None, json.dumps(answer))
    return out


async def test_differential_table(served: tuple[ClerkEmulator, str]) -> None:
    emu, url = served
    assert len(ROWS) >= 30 and len({r.name for r in ROWS}) == len(ROWS)
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(emu.now())
    mismatches: list[str] = []
    for parties in (False, True):
        rows = [r for r in ROWS if r.parties is parties]
        tokens = {r.name: craft(emu, foreign, r, now) for r in rows}
        proxy = await judge_by_proxy(url, parties, tokens)
        clerk = await judge_by_clerk(url, parties, tokens)
        for row in rows:
            ours, theirs = proxy[row.name], clerk[row.name]
            clerk_expected = row.verdict if not row.stricter else _kind(row)
            if theirs.verdict != clerk_expected:
                mismatches.append(f"{row.name}: Clerk's SDK {theirs.verdict} ({theirs.detail})")
            if ours.verdict != row.verdict:
                mismatches.append(f"{row.name}: the proxy {ours.verdict} ({ours.detail})")
            if not row.stricter and (ours.verdict, ours.subject) != (
                theirs.verdict,
                theirs.subject,
            ):
                mismatches.append(f"{row.name}: proxy {ours} vs Clerk {theirs}")
            if row.scopes is not None and ours.scopes != row.scopes:
                mismatches.append(f"{row.name}: proxy scopes {ours.scopes}")
            if row.clerk_scopes is not None and theirs.scopes != row.clerk_scopes:
                mismatches.append(f"{row.name}: Clerk scopes {theirs.scopes}")
    assert mismatches == [], "\n".join(mismatches)


def _kind(row: Row) -> str:
    """What Clerk's SDK accepts a stricter row as."""
    return {"at+jwt": "oauth_token"}.get(row.header.get("typ", ""), "session_token")
