"""The JWT attack list, per issuer preset and key type, against the real verifier of that
issuer (discovery and JWKS from the issuer emulator over a socket, fake clock); then
cross-issuer confusion and the unknown-kid flood."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpServer

from proxy.auth.issuers.routing import IssuerVerifier, Unverified, peek
from proxy.auth.verifier import ClerkVerifier
from proxy.config.load import build_config
from proxy.core.errors import ProxyError
from proxy.emulator.issuer_app import IssuerEmulator
from proxy.observe.metrics import Metrics
from tests.support_issuers import API, Clock

T0 = 1_800_000_000.0


@dataclass(frozen=True)
class Case:
    preset: str
    algorithm: str
    typ: str  # the header typ this issuer sends
    claims: Callable[[str], dict[str, Any]]  # good claims, given the issuer URL
    trailing_slash: bool = False


def authgear(iss: str) -> dict[str, Any]:
    return {"iss": iss, "aud": API, "iat": T0, "exp": T0 + 1800, "jti": secrets.token_hex(8),
            "client_id": "svc-a", "scope": "scores:read", "sub": "client_id_svc-a"}


def rfc9068(iss: str) -> dict[str, Any]:
    return {"iss": iss, "aud": [API], "iat": T0, "exp": T0 + 600, "jti": "j1",
            "client_id": "svc-a", "sub": "svc-a", "scope": "scores:read"}


def keycloak(iss: str) -> dict[str, Any]:
    return {"iss": iss, "aud": API, "iat": T0, "exp": T0 + 300, "jti": "j1", "typ": "Bearer",
            "azp": "svc-a", "client_id": "svc-a", "sub": "4f1c-uuid", "scope": "scores:read"}


def kinde(iss: str) -> dict[str, Any]:
    return {"iss": iss, "aud": [API], "iat": T0, "exp": T0 + 86400, "jti": "j1",
            "azp": "svc-a", "gty": ["client_credentials"], "scope": "scores:read",
            "scp": ["scores:read", "scores:admin"], "v": "2", "org_code": "org_1"}


def auth0(iss: str) -> dict[str, Any]:
    return {"iss": iss, "aud": API, "iat": T0, "exp": T0 + 86400, "azp": "svc-a",
            "gty": "client-credentials", "sub": "svc-a@clients", "scope": "scores:read"}


CASES = [
    Case("authgear", "RS256", "at+jwt", authgear),
    Case("rfc9068", "ES256", "at+jwt", rfc9068),
    Case("rfc9068", "EdDSA", "application/at+jwt", rfc9068),
    Case("rfc9068", "PS256", "at+jwt", rfc9068),
    Case("keycloak", "RS256", "JWT", keycloak),
    Case("kinde", "RS256", "JWT", kinde),
    Case("auth0", "RS256", "JWT", auth0, trailing_slash=True),
]


@dataclass
class Env:
    case: Case
    emu: IssuerEmulator
    verifier: IssuerVerifier
    clock: Clock
    jku_hits: list[str]

    def good(self, **changes: Any) -> dict[str, Any]:
        claims = {**self.case.claims(self.emu.issuer), **changes}
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any] | None = None, **headers: Any) -> str:
        return self.emu.mint(claims or self.good(), {"typ": self.case.typ, **headers})

    async def judge(self, token: str) -> Any:
        return await self.verifier.verify_jwt(token, parts_of(token))


def parts_of(token: str) -> Unverified:
    parts = peek(token)
    assert parts is not None
    return parts


def issuer_config(url: str, case: Case, **extra: Any) -> Any:
    raw = {
        "upstream": {"url": "http://127.0.0.1:1"},
        "clerk": {"api_url": "http://127.0.0.1:1", "secret_key": "sk_test_x"},
        "issuers": [
            {"name": "it", "preset": case.preset, "issuer": url, "audiences": [API],
             "algorithms": [case.algorithm], "jwks_min_refetch_seconds": 30, **extra}
        ],
    }
    return build_config(raw, file="t")


@pytest.fixture(params=CASES, ids=lambda c: f"{c.preset}-{c.algorithm}")
async def env(request: Any, aiohttp_server: AiohttpServer) -> AsyncIterator[Env]:
    case: Case = request.param
    clock = Clock(T0)
    emu = IssuerEmulator(algorithm=case.algorithm, now=clock)
    server = await aiohttp_server(emu.app)
    emu.issuer = str(server.make_url("")).rstrip("/") + ("/" if case.trailing_slash else "")
    hits: list[str] = []
    evil = aiohttp.web.Application()

    async def evil_keys(req: aiohttp.web.Request) -> aiohttp.web.Response:
        hits.append(req.path)
        return aiohttp.web.json_response({"keys": []})

    evil.router.add_get("/{tail:.*}", evil_keys)
    evil_server = await aiohttp_server(evil)
    cfg = issuer_config(emu.issuer, case)
    async with aiohttp.ClientSession() as session:
        verifier = IssuerVerifier(cfg.issuers[0], session, Metrics(), now=clock)
        e = Env(case, emu, verifier, clock, hits)
        e.evil_url = str(evil_server.make_url("/jwks"))  # type: ignore[attr-defined]
        yield e


async def test_a_good_token_passes(env: Env) -> None:
    principal = await env.judge(env.sign())
    assert (principal.type, principal.id, principal.issuer) == ("machine", "svc-a", "it")
    assert principal.scopes == frozenset({"scores:read"})  # Kinde: `scope`, never `scp`


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes = b"") -> str:
    head = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(key, head.encode(), hashlib.sha256).digest() if key else b""
    return f"{head}.{b64(sig)}"


def public_pem(emu: IssuerEmulator) -> bytes:
    return emu.active.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def not_allowed(e: Env) -> str:
    """RS384 is on no case's allow-list: refused before any key is looked at."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(e.good(), key, "RS384", headers={"kid": e.emu.active.kid, "typ": e.case.typ})


ATTACKS: list[tuple[str, Callable[[Env], str], str]] = [
    ("alg none", lambda e: forge({"alg": "none", "kid": e.emu.active.kid, "typ": e.case.typ}, e.good()), "algorithm"),
    ("alg None", lambda e: forge({"alg": "None", "kid": e.emu.active.kid, "typ": e.case.typ}, e.good()), "algorithm"),
    ("HS256 keyed with the public key", lambda e: forge({"alg": "HS256", "kid": e.emu.active.kid, "typ": e.case.typ}, e.good(), public_pem(e.emu)), "algorithm"),
    ("HS256 keyed with the JWK", lambda e: forge({"alg": "HS256", "kid": e.emu.active.kid, "typ": e.case.typ}, e.good(), json.dumps(e.emu.active.public_jwk).encode()), "algorithm"),
    ("an algorithm not allowed here", lambda e: not_allowed(e), "algorithm"),
    ("jku to a key set of the attacker's", lambda e: e.sign(jku=e.evil_url), "jku"),  # type: ignore[attr-defined]
    ("x5u", lambda e: e.sign(x5u=e.evil_url), "x5u"),  # type: ignore[attr-defined]
    ("embedded jwk", lambda e: e.sign(jwk=e.emu.active.public_jwk), "jwk"),
    ("x5c", lambda e: e.sign(x5c=["MIIB"]), "x5c"),
    ("crit", lambda e: e.sign(crit=["exp"]), "crit"),
    ("no kid", lambda e: forge({"alg": e.case.algorithm, "typ": e.case.typ}, e.good(), b""), "kid"),
    ("unknown kid", lambda e: e.sign(kid="not-published"), "does not publish"),
    ("right kid, another key", lambda e: IssuerEmulator(e.emu.issuer, algorithm=e.case.algorithm).mint(e.good(), {"typ": e.case.typ, "kid": e.emu.active.kid}), "signature"),
    ("wrong typ", lambda e: e.sign(typ="id+jwt"), "typ"),
    ("expired", lambda e: e.sign(e.good(exp=T0 - 60)), "expired"),
    ("no exp", lambda e: e.sign(e.good(exp=None)), "expiry"),
    ("not yet valid", lambda e: e.sign(e.good(nbf=T0 + 600)), "not valid yet"),
    ("issued in the future", lambda e: e.sign(e.good(iat=T0 + 600)), "future"),
    ("another API's token", lambda e: e.sign(e.good(aud="https://other.example")), "another API"),
    ("no audience", lambda e: e.sign(e.good(aud=None)), "audience"),
    ("exp as a string", lambda e: e.sign(e.good(exp=str(T0 + 60))), "not a number"),
]


@pytest.mark.parametrize(("name", "make", "why"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_attacks_are_refused(env: Env, name: str, make: Callable[[Env], str], why: str) -> None:
    token = make(env)
    with pytest.raises(ProxyError) as info:
        await env.judge(token)
    assert info.value.status == 401, info.value.message
    assert why in info.value.message
    assert env.jku_hits == []  # a token's own key location is never followed


async def test_key_type_must_fit_the_algorithm(env: Env) -> None:
    """A published key of another type under the token's kid: refused, never tried."""
    other = "ES256" if env.case.algorithm != "ES256" else "RS256"
    kid = env.emu.rotate_key(other)
    token = jwt.encode(env.good(), env.emu.active.private_key, other, headers={"kid": kid, "typ": env.case.typ})
    forged = forge({"alg": env.case.algorithm, "kid": kid, "typ": env.case.typ}, env.good()).rsplit(".", 1)[0]
    forged += "." + token.rsplit(".", 1)[1]
    with pytest.raises(ProxyError) as info:
        await env.judge(forged)
    assert "cannot verify" in info.value.message or "published for" in info.value.message


async def test_jwk_alg_pins_the_algorithm(aiohttp_server: AiohttpServer) -> None:
    """An RSA key published for RS256 does not verify a PS256 signature by the same key."""
    case = Case("rfc9068", "RS256", "at+jwt", rfc9068)
    clock = Clock(T0)
    emu = IssuerEmulator(now=clock)
    server = await aiohttp_server(emu.app)
    emu.issuer = str(server.make_url("")).rstrip("/")
    cfg = issuer_config(emu.issuer, case, algorithms=["RS256", "PS256"])
    token = jwt.encode(rfc9068(emu.issuer), emu.active.private_key, "PS256", headers={"kid": emu.active.kid, "typ": "at+jwt"})
    async with aiohttp.ClientSession() as session:
        verifier = IssuerVerifier(cfg.issuers[0], session, Metrics(), now=clock)
        with pytest.raises(ProxyError) as info:
            await verifier.verify_jwt(token, parts_of(token))
    assert "published for RS256" in info.value.message


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits")
async def test_short_rsa_keys_are_refused(aiohttp_server: AiohttpServer) -> None:
    clock = Clock(T0)
    emu = IssuerEmulator(now=clock)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    emu.active.private_key = weak
    emu.active.public_jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key())),
                             "kid": emu.active.kid, "use": "sig", "alg": "RS256"}
    server = await aiohttp_server(emu.app)
    emu.issuer = str(server.make_url("")).rstrip("/")
    cfg = issuer_config(emu.issuer, Case("rfc9068", "RS256", "at+jwt", rfc9068))
    token = emu.mint(rfc9068(emu.issuer))
    async with aiohttp.ClientSession() as session:
        verifier = IssuerVerifier(cfg.issuers[0], session, Metrics(), now=clock)
        with pytest.raises(ProxyError) as info:
            await verifier.verify_jwt(token, parts_of(token))
    assert "shorter than 2048" in info.value.message


# -- cross-issuer confusion ---------------------------------------------------------


@pytest.fixture
async def two(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[ClerkVerifier, IssuerEmulator, IssuerEmulator, Clock]]:
    clock = Clock(T0)
    a, b = IssuerEmulator(now=clock), IssuerEmulator(now=clock)
    for emu in (a, b):
        server = await aiohttp_server(emu.app)
        emu.issuer = str(server.make_url("")).rstrip("/")
    b.rotate_key(kid=a.active.kid)  # both publish the same kid, with different keys
    raw = {
        "upstream": {"url": "http://127.0.0.1:1"},
        "clerk": {"api_url": "http://127.0.0.1:1", "secret_key": "sk_test_x", "issuer": "https://clerk.x.example"},
        "issuers": [
            {"name": "a", "preset": "authgear", "issuer": a.issuer, "audiences": [API]},
            {"name": "b", "preset": "authgear", "issuer": b.issuer, "audiences": [API]},
        ],
    }
    config = build_config(raw, file="t")
    async with aiohttp.ClientSession() as session:
        yield ClerkVerifier(config, session, Metrics(), now=clock), a, b, clock


async def test_same_kid_in_two_sets_never_crosses(two: Any) -> None:
    verifier, a, b, _ = two
    assert a.active.kid == b.active.kid
    good_a, good_b = a.mint(authgear(a.issuer)), b.mint(authgear(b.issuer))
    assert (await verifier.verify(good_a, "1.2.3.4")).issuer == "a"
    assert (await verifier.verify(good_b, "1.2.3.4")).issuer == "b"
    # b's key signing a token that names a: checked against a's key of that kid only.
    crossed = b.mint(authgear(a.issuer))
    with pytest.raises(ProxyError) as info:
        await verifier.verify(crossed, "1.2.3.4")
    assert "signature" in info.value.message


async def test_a_kid_of_another_issuers_set_is_unknown(two: Any) -> None:
    verifier, a, b, _ = two
    kid = b.rotate_key()  # only b publishes this one
    crossed = b.mint(authgear(a.issuer))  # names a, signed with b's new key
    with pytest.raises(ProxyError) as info:
        await verifier.verify(crossed, "1.2.3.4")
    assert "does not publish" in info.value.message
    assert kid not in {k.kid for k in a.keys}


async def test_unknown_kid_flood_costs_one_fetch_per_interval(two: Any) -> None:
    verifier, a, _, clock = two
    await verifier.verify(a.mint(authgear(a.issuer)), "1.2.3.4")
    assert a.calls["jwks"] == 1
    intervals = 4
    rest = a.mint(authgear(a.issuer)).split(".", 1)[1]  # payload and signature, reused
    for i in range(10_000):
        if i and i % (10_000 // intervals) == 0:
            clock.t += 30  # one refetch interval (jwks_min_refetch_seconds) passes
        header = {"alg": "RS256", "typ": "at+jwt", "kid": secrets.token_hex(6)}
        token = f"{b64(json.dumps(header).encode())}.{rest}"
        with pytest.raises(ProxyError):
            await verifier.verify(token, "1.2.3.4")
    # The set was fresh (max-age 300), so only unknown kids could refetch: ≤ 1 per interval.
    assert a.calls["jwks"] - 1 <= intervals
