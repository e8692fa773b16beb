"""JWKS caching/refetch and local JWT verification, against a local server that serves
a JWKS document we control (RSA keys generated here), with a fake clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpServer

from proxy.auth.clerk.api import ClerkClient
from proxy.auth.clerk.keys import Jwks
from proxy.auth.jws import check_claims
from proxy.auth.keyset import parse_jwks  # Clerk's set is read as every issuer's
from proxy.config.load import Clerk, build_config
from proxy.core.errors import TOKEN_EXPIRED, TOKEN_INVALID, VERIFICATION_UNAVAILABLE, ProxyError
from proxy.observe.metrics import Metrics

T0 = 1_700_000_000.0


def clerk_cfg(url: str = "http://127.0.0.1:1", **over: Any) -> Clerk:
    raw = {"api_url": url, "secret_key": "sk_test_instance", "timeout": 0.5, **over}
    return build_config(
        {"upstream": {"url": "http://127.0.0.1:1"}, "clerk": raw}, file="test"
    ).clerk


@pytest.mark.parametrize(
    ("claims", "over", "code"),
    [
        ({"exp": T0 + 60}, {}, None),
        ({"exp": T0 - 4}, {}, None),  # inside the 5 s skew
        ({"exp": T0 - 6}, {}, TOKEN_EXPIRED),
        ({"exp": T0 - 2}, {"clock_skew_seconds": 1}, TOKEN_EXPIRED),
        ({}, {}, TOKEN_INVALID),  # no expiry: never accepted
        ({"exp": "later"}, {}, TOKEN_INVALID),
        ({"exp": T0 + 60, "nbf": T0 + 4}, {}, None),
        ({"exp": T0 + 60, "nbf": T0 + 6}, {}, TOKEN_INVALID),
        ({"exp": T0 + 60, "iat": T0 + 6}, {}, TOKEN_INVALID),
        (
            {"exp": T0 + 60, "iss": "https://clerk.example/"},
            {"issuer": "https://clerk.example"},
            None,
        ),
        (
            {"exp": T0 + 60, "iss": "https://other.example"},
            {"issuer": "https://clerk.example"},
            TOKEN_INVALID,
        ),
        ({"exp": T0 + 60}, {"issuer": "https://clerk.example"}, TOKEN_INVALID),
    ],
)
def test_check_claims(claims: dict[str, Any], over: dict[str, Any], code: str | None) -> None:
    rules = Jwks(clerk_cfg(**over), None, now=lambda: T0).rules  # type: ignore[arg-type]
    if code is None:
        check_claims(claims, rules, T0)
    else:
        with pytest.raises(ProxyError) as info:
            check_claims(claims, rules, T0)
        assert info.value.code == code


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY_A, KEY_B = new_key(), new_key()


def jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig", "alg": "RS256", **extra}


def test_parse_jwks_keeps_rsa_signing_keys_only() -> None:
    doc = {
        "keys": [
            jwk(KEY_A, "a"),
            jwk(KEY_B, "enc", use="enc"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "RSA", "kid": "broken", "n": "x"},
            jwk(KEY_B, "b"),
        ]
    }
    assert sorted(parse_jwks(json.dumps(doc).encode())) == ["a", "b"]


@pytest.mark.parametrize("body", [b"{}", b"[]", b"nope", b'{"keys": 1}'])
def test_parse_jwks_rejects_non_documents(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_jwks(body)


@dataclass
class JwksServer:
    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    fetches: int = 0
    auth: list[str] = field(default_factory=list)
    cache_control: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        self.auth.append(request.headers.get("Authorization", ""))
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        return web.json_response({"keys": self.keys}, status=self.status, headers=headers)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def env(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[JwksServer, Jwks, Clock]]:
    served = JwksServer(keys=[jwk(KEY_A, "ins_a")])
    app = web.Application()
    app.router.add_get("/v1/jwks", served.handle)
    server = await aiohttp_server(app)
    clock = Clock()
    cfg = clerk_cfg(
        str(server.make_url("")).rstrip("/"), jwks_cache_seconds=300, jwks_min_refetch_seconds=30
    )
    async with aiohttp.ClientSession() as session:
        # One clock for the key set and Clerk's gate (JWKS calls pass it too).
        client = ClerkClient(cfg, session, Metrics(), now=clock, monotonic=clock)
        yield served, Jwks(cfg, client, now=clock), clock


def sign(key: rsa.RSAPrivateKey, kid: str, alg: str = "RS256", **claims: Any) -> str:
    payload = {"sub": "user_1", "sid": "sess_1", "iat": T0, "nbf": T0, "exp": T0 + 60, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
async def test_valid_signatures(env: tuple[JwksServer, Jwks, Clock], alg: str) -> None:
    served, jwks, _ = env
    served.keys = [jwk(KEY_A, "ins_a", alg=alg)]
    claims = await jwks.verify(sign(KEY_A, "ins_a", alg))
    assert claims["sub"] == "user_1"
    assert served.auth == ["Bearer sk_test_instance"]


@pytest.mark.parametrize("alg", ["RS384", "RS512"])
async def test_a_key_signs_only_for_its_own_algorithm(
    env: tuple[JwksServer, Jwks, Clock], alg: str
) -> None:
    # The served key says RS256 (as Clerk's do): a token signed RS384 with it is refused,
    # as Clerk's SDK refuses it (WebCrypto imports the key for its `alg` only).
    _, jwks, _ = env
    with pytest.raises(ProxyError) as info:
        await jwks.verify(sign(KEY_A, "ins_a", alg))
    assert info.value.code == TOKEN_INVALID and "algorithm" in info.value.message


@pytest.mark.parametrize(("alg", "verifies"), [("RS256", True), ("RS384", False)])
async def test_a_key_whose_jwk_names_no_alg_signs_rs256_only(
    env: tuple[JwksServer, Jwks, Clock], alg: str, verifies: bool
) -> None:
    # Clerk's SDK (WebCrypto) imports such a key for RS256: the proxy reads it so once, as
    # its set is read, on the held keys' path (a miss) and the fetching one alike.
    served, jwks, _ = env
    served.keys = [{k: v for k, v in jwk(KEY_A, "ins_a").items() if k != "alg"}]
    token = sign(KEY_A, "ins_a", alg)
    if verifies:
        assert (await jwks.verify(token))["sub"] == "user_1"
        assert (jwks.verify_held(token, None, None) or {}).get("sub") == "user_1"
        return
    with pytest.raises(ProxyError) as info:
        await jwks.verify(token)
    assert info.value.code == TOKEN_INVALID and "algorithm" in info.value.message
    with pytest.raises(ProxyError) as info:
        jwks.verify_held(token, None, None)
    assert info.value.code == TOKEN_INVALID and "algorithm" in info.value.message


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
    def b64(raw: bytes) -> str:
        return jwt.utils.base64url_encode(raw).decode()

    return (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"
    )


def hs256_with_public_key() -> str:
    import hashlib
    import hmac

    header = {"alg": "HS256", "kid": "ins_a", "typ": "JWT"}
    payload = {"sub": "user_1", "exp": T0 + 60}
    b64 = jwt.utils.base64url_encode
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    sig = hmac.new(public_pem(KEY_A), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(sig)).decode()


@pytest.mark.parametrize(
    ("make_token", "message"),
    [
        (
            lambda: forge({"alg": "none", "kid": "ins_a"}, {"sub": "user_1", "exp": T0 + 60}, b""),
            "algorithm",
        ),
        (hs256_with_public_key, "algorithm"),
        (lambda: sign(KEY_B, "ins_a"), "signature"),  # right kid, wrong key
        (lambda: sign(KEY_A, "ins_a", exp=T0 - 60), "expired"),
        (lambda: sign(KEY_A, "ins_a", nbf=T0 + 60), "not valid yet"),
        (lambda: forge({"alg": "RS256"}, {"sub": "user_1"}, b"x"), "kid"),
    ],
)
async def test_rejections(
    env: tuple[JwksServer, Jwks, Clock], make_token: Any, message: str
) -> None:
    _, jwks, _ = env
    with pytest.raises(ProxyError) as info:
        await jwks.verify(make_token(), "session_token")
    assert info.value.status == 401
    assert message in info.value.message
    assert info.value.token_type == "session_token"


async def test_unknown_kid_refetches_at_most_once_per_interval(
    env: tuple[JwksServer, Jwks, Clock],
) -> None:
    served, jwks, clock = env
    await jwks.verify(sign(KEY_A, "ins_a"))
    assert served.fetches == 1
    foreign = sign(KEY_B, "ins_other", exp=T0 + 600)
    clock.t += 31
    for _ in range(100):
        with pytest.raises(ProxyError) as info:
            await jwks.verify(foreign)
        assert "scoped to one Clerk instance" in info.value.message
    assert served.fetches == 2  # one refetch, then rate limited
    # The instance rotates to a new key: picked up at the next allowed refetch.
    served.keys.append(jwk(KEY_B, "ins_other"))
    clock.t += 30
    await jwks.verify(sign(KEY_B, "ins_other", exp=T0 + 600))
    assert served.fetches == 3


async def test_keys_are_cached_then_refreshed(env: tuple[JwksServer, Jwks, Clock]) -> None:
    served, jwks, clock = env
    token = sign(KEY_A, "ins_a", exp=T0 + 10_000)
    for _ in range(50):
        await jwks.verify(token)
    assert served.fetches == 1
    clock.t += 300
    await jwks.verify(token)  # the held key answers; the refetch runs behind it
    await jwks.keys.settled()
    assert served.fetches == 2


async def test_last_good_keys_survive_a_failed_refresh(env: tuple[JwksServer, Jwks, Clock]) -> None:
    served, jwks, clock = env
    token = sign(KEY_A, "ins_a", exp=T0 + 10_000)
    await jwks.verify(token)
    served.status = 500
    clock.t += 301
    assert (await jwks.verify(token))["sub"] == "user_1"


async def test_no_keys_at_all_is_unavailable(env: tuple[JwksServer, Jwks, Clock]) -> None:
    served, jwks, _ = env
    served.status = 503
    with pytest.raises(ProxyError) as info:
        await jwks.verify(sign(KEY_A, "ins_a"))
    assert info.value.code == VERIFICATION_UNAVAILABLE


async def test_failed_fetches_back_off(env: tuple[JwksServer, Jwks, Clock]) -> None:
    served, jwks, clock = env
    served.status = 503
    for _ in range(20):
        with pytest.raises(ProxyError):
            await jwks.verify(sign(KEY_A, "ins_a"))
    assert served.fetches == 1  # an outage does not put a fetch in front of every request
    clock.t += 5
    served.status = 200
    await jwks.verify(sign(KEY_A, "ins_a"))
    assert served.fetches == 2


async def test_cache_control_sets_how_long_keys_are_kept(env: tuple[JwksServer, Jwks, Clock]) -> None:
    served, jwks, clock = env
    served.cache_control = "public, max-age=60"  # within [30, 300]: kept 60 s
    token = sign(KEY_A, "ins_a", exp=T0 + 10_000)
    await jwks.verify(token)
    clock.t += 59
    await jwks.verify(token)
    assert served.fetches == 1
    clock.t += 2
    await jwks.verify(token)
    await jwks.keys.settled()  # refetched in the background
    assert served.fetches == 2
    served.cache_control = "no-store"  # as short as allowed: the refetch interval
    clock.t += 61
    await jwks.verify(token)
    await jwks.keys.settled()
    clock.t += 29
    await jwks.verify(token)
    assert served.fetches == 3
    clock.t += 2
    await jwks.verify(token)
    await jwks.keys.settled()
    assert served.fetches == 4


@pytest.mark.parametrize(
    "claims",
    [{"exp": 10**400}, {"nbf": 10**400}, {"exp": float("nan")}, {"exp": float("inf")},
     {"iat": float("-inf")}, {"sid": float("nan")}],
    ids=["exp-1e400", "nbf-1e400", "exp-nan", "exp-inf", "iat-minus-inf", "sid-nan"],
)
async def test_claims_are_strict_json_and_dates_in_range(
    env: tuple[JwksServer, Jwks, Clock], claims: dict[str, Any]
) -> None:
    """Issue 26 row 11 for Clerk's own JWTs: 401, never an overflow or a token that does
    not expire."""
    _, jwks, _ = env
    with pytest.raises(ProxyError) as info:
        await jwks.verify(sign(KEY_A, "ins_a", **claims))
    assert info.value.code == TOKEN_INVALID
