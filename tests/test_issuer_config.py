"""`issuers:` and route `issuers:` in the config: presets, defaults, and every refusal
named by its key; plus the pure parts of the key set and discovery."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.auth import jws
from proxy.auth.issuers.discovery import metadata_urls, parse_metadata
from proxy.auth.keyset import cache_seconds, parse_jwks
from proxy.config import issuers as issuer_config
from proxy.config.load import ConfigError, build_config
from proxy.config.model import MachineRule

API = "https://api.scores.example"


def build(issuers: Any, routes: Any = None, clerk_issuer: str = "") -> Any:
    raw: dict[str, Any] = {
        "upstream": {"url": "http://127.0.0.1:1"},
        "clerk": {"api_url": "http://127.0.0.1:1", "secret_key": "sk_test_x"},
        "issuers": issuers,
    }
    if clerk_issuer:
        raw["clerk"]["issuer"] = clerk_issuer
    if routes is not None:
        raw["routes"] = routes
    return build_config(raw, file="c.yaml")


def problems(issuers: Any, routes: Any = None, clerk_issuer: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        build(issuers, routes, clerk_issuer)
    return "\n".join(str(i) for i in info.value.issues)


def test_three_lines_for_authgear() -> None:
    cfg = build([{"name": "authgear", "preset": "authgear", "issuer": "https://s.authgear.cloud", "audiences": [API]}])
    (it,) = cfg.issuers
    assert (it.issuer, it.algorithms, it.token_types) == ("https://s.authgear.cloud", ("RS256",), ("at+jwt",))
    assert it.claims.machine == (MachineRule(sub="client_id_{client_id}"),)
    assert it.claims.client_id == ("client_id",)
    assert it.jwks_url == "" and it.introspection is None


@pytest.mark.parametrize(
    ("preset", "client_id", "typ"),
    [
        ("auth0", ("client_id", "azp"), ("JWT", "at+jwt")),
        ("keycloak", ("client_id", "clientId", "azp"), ("JWT", "at+jwt")),
        ("kinde", ("azp",), ("JWT", "")),
        ("rfc9068", ("client_id",), ("at+jwt", "application/at+jwt")),
    ],
)
def test_presets(preset: str, client_id: tuple[str, ...], typ: tuple[str, ...]) -> None:
    issuer = "https://t.example/" if preset == "auth0" else "https://t.example/realms/x"
    (it,) = build([{"name": "x", "preset": preset, "issuer": issuer, "audiences": [API]}]).issuers
    assert (it.claims.client_id, it.token_types) == (client_id, typ)


def test_everything_a_preset_sets_can_be_set() -> None:
    (it,) = build([{
        "name": "corp", "issuer": "https://id.corp.example", "audiences": [API, "urn:scores"],
        "jwks_url": "https://id.corp.example/keys", "algorithms": ["ES256", "EdDSA"],
        "token_types": ["JWT"], "leeway_seconds": "30s", "timeout": "2s",
        "claims": {"client_id": ["cid"], "machine": [{"claim": "grant", "value": "m2m"}],
                   "scopes": ["scp", "scope"], "forward": ["tenant"], "require": {"ver": "2"}},
        "introspection": {"endpoint": "https://id.corp.example/introspect", "client_id": "rs",
                          "client_secret": "s3cret", "auth_method": "client_secret_post",
                          "token_prefix": "corp_"},
    }]).issuers
    assert it.claims.require == (("ver", "2"),)
    assert it.leeway_seconds == 30 and it.algorithms == ("ES256", "EdDSA")
    assert it.introspection is not None and it.introspection.client_secret == "s3cret"
    assert "s3cret" not in repr(it)


@pytest.mark.parametrize(
    ("entry", "key", "why"),
    [
        ({"preset": "authgear"}, "issuers[0].audiences", "is required"),
        ({"preset": "auth0", "issuer": "https://t.auth0.com"}, "issuers[0].issuer", "trailing slash"),
        ({"algorithms": ["HS256", "none"]}, "issuers[0].algorithms", "never none or HS"),
        ({"issuer": "http://id.example"}, "issuers[0].issuer", "https is required"),
        ({"issuer": "https://id.example?x=1"}, "issuers[0].issuer", "no query"),
        ({"name": "clerk"}, "issuers[0].name", "not 'clerk'"),
        ({"name": "Bad Name"}, "issuers[0].name", "lowercase"),
        ({"preset": "okta"}, "issuers[0].preset", "unknown preset"),
        ({"claims": {"machine": [{"sub": "fixed"}]}}, "issuers[0].claims.machine[0].sub", "{client_id}"),
        ({"claims": {"machine": [{"sub": "{client_id}", "claim": "x"}]}}, "issuers[0].claims.machine[0]", "either"),
        ({"claims": {"scopes": []}}, "issuers[0].claims.scopes", "at least one"),
        ({"jwks_min_refetch_seconds": 0}, "issuers[0]", "jwks_min_refetch_seconds"),
        ({"introspection": {"client_id": "rs"}}, "issuers[0].introspection.client_secret", "missing secret"),
        ({"introspection": {"client_id": "rs", "client_secret": "x", "token_prefix": "mt_"}}, "issuers[0].introspection.token_prefix", "Clerk's"),
        ({"introspection": {"client_id": "rs", "client_secret": "x", "auth_method": "private_key_jwt"}}, "issuers[0].introspection.auth_method", "must be client_secret_basic or client_secret_post"),
        ({"surprise": 1}, "issuers[0].surprise", "unknown key"),
    ],
)
def test_refusals_name_the_key(entry: dict[str, Any], key: str, why: str) -> None:
    base = {"name": "it", "issuer": "https://id.example", "audiences": [API]}
    if entry.get("preset") == "authgear":
        base.pop("audiences")
    text = problems([{**base, **entry}])
    assert f"c.yaml: {key}: " in text and why in text, text


def test_refusals_across_entries() -> None:
    one = {"name": "a", "issuer": "https://id.example", "audiences": [API]}
    text = problems([one, {**one}], clerk_issuer="https://id.example")
    assert "duplicate issuer name" in text
    assert "another entry already serves this issuer" in text
    assert "this is clerk.issuer" in text
    intro = {"client_id": "rs", "client_secret": "x"}
    text = problems([{**one, "introspection": intro}, {**one, "name": "b", "issuer": "https://b.example", "introspection": intro}])
    assert "only one issuer may take opaque tokens without a prefix" in text


def test_loopback_http_is_allowed_for_tests_and_the_emulator() -> None:
    (it,) = build([{"name": "emu", "issuer": "http://127.0.0.1:3200", "audiences": [API]}]).issuers
    assert it.issuer == "http://127.0.0.1:3200"


def test_route_issuers() -> None:
    one = {"name": "authgear", "preset": "authgear", "issuer": "https://a.example", "audiences": [API]}
    cfg = build([one], routes=[
        {"path": "/a/**", "issuers": ["clerk", "authgear"]},
        {"path": "/b/**", "issuers": {"authgear": {"scopes": ["feeds:read"], "clients": ["svc-a"], "principal_types": ["machine"]}}},
    ])
    a, b = cfg.routes
    assert [n for n, _ in a.issuers] == ["clerk", "authgear"]
    (name, rule), = b.issuers
    assert (name, rule.scopes, rule.clients, rule.principal_types) == ("authgear", ("feeds:read",), frozenset({"svc-a"}), frozenset({"machine"}))
    text = problems([one], routes=[
        {"path": "/a/**", "issuers": ["nobody"]},
        {"path": "/b/**", "issuers": {"clerk": {"scopes": ["x"]}}},
        {"path": "/c/**", "auth": "public", "issuers": ["authgear"]},
        {"path": "/d/**", "issuers": {"authgear": {"principal_types": ["robot"]}}},
    ])
    assert "routes[0].issuers.nobody: no issuer of that name (known: authgear, clerk)" in text
    assert "routes[1].issuers.clerk: Clerk's rules are the route's own" in text
    assert "routes[2]: a public route cannot name issuers" in text
    assert "routes[3].issuers.authgear.principal_types: unknown principal type(s) robot" in text


def test_config_algorithms_are_what_jws_verifies() -> None:
    assert set(issuer_config.ALGORITHMS) == set(jws.ALGORITHMS)


# -- key sets and discovery, pure ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("", 3600),
        ("public, max-age=300", 300),
        ("max-age=5", 30),  # never below the refetch interval
        ("max-age=999999", 3600),  # never above the configured bound
        ("no-store", 30),
        ("private, no-cache", 30),
        ('max-age="120"', 120),
        ("s-maxage=10", 3600),
        ("max-age=abc", 3600),
    ],
)
def test_cache_control(value: str, seconds: float) -> None:
    assert cache_seconds({"Cache-Control": value} if value else {}, 30, 3600) == seconds


def test_parse_jwks_keeps_only_what_can_verify() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key))
    doc = {"keys": [
        {**rsa_jwk, "kid": "r"},
        {**ec_jwk, "kid": "e", "alg": "ES256"},
        {**rsa_jwk, "kid": "enc", "use": "enc"},
        {**rsa_jwk, "kid": "ops", "key_ops": ["encrypt"]},
        {**private, "kid": "priv"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
        {**rsa_jwk, "kid": "dup"},
        {**ec_jwk, "kid": "dup"},
        {**ec_jwk, "kid": "badcurve", "crv": "P-192"},
        {**rsa_jwk},
        "junk",
    ]}
    keys = parse_jwks(json.dumps(doc).encode())
    assert sorted(keys) == ["e", "r"]
    assert (keys["e"].kty, keys["e"].crv, keys["e"].alg) == ("EC", "P-256", "ES256")
    assert jws.key_misfit(keys["r"], "ES256") is not None
    assert jws.key_misfit(keys["e"], "ES384") is not None
    assert jws.key_misfit(keys["e"], "ES256") is None


def test_metadata_urls() -> None:
    assert metadata_urls("https://a.example") == (
        "https://a.example/.well-known/openid-configuration",
        "https://a.example/.well-known/oauth-authorization-server",
    )
    assert metadata_urls("https://kc.example/realms/p") == (
        "https://kc.example/realms/p/.well-known/openid-configuration",
        "https://kc.example/.well-known/oauth-authorization-server/realms/p",
    )
    assert metadata_urls("https://t.auth0.com/")[0] == "https://t.auth0.com/.well-known/openid-configuration"


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"issuer": "https://a.example/", "jwks_uri": "https://a.example/k"}, "is for issuer"),
        ({"issuer": "https://a.example"}, "jwks_uri"),
        ({"issuer": "https://a.example", "jwks_uri": "http://a.example/k"}, "https is required"),
        ([], "not a JSON object"),
    ],
)
def test_parse_metadata_refuses(doc: Any, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_metadata(json.dumps(doc).encode(), "https://a.example")
    assert why in str(info.value)
