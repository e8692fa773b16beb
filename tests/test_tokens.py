"""Bearer extraction and classification by shape: strings in, kinds or refusals out."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest

from proxy.auth import tokens
from proxy.auth.tokens import TokenKind
from proxy.core.errors import (
    BAD_REQUEST,
    TOKEN_ID_NOT_SECRET,
    TOKEN_INVALID,
    TOKEN_TYPE_MISMATCH,
    ProxyError,
)

M2M_SECRET = "mt_" + "a1B2c3D4" * 6
M2M_ID = "mt_0123456789abcdef0123456789abcdef"


def b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def b64_raw(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_shape(
    header: Mapping[str, object], payload: Mapping[str, object], sig: str = "c2lnbmF0dXJl"
) -> str:
    return f"{b64(header)}.{b64(payload)}.{sig}"


RS = {"alg": "RS256", "kid": "ins_1", "typ": "JWT"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        (["Bearer abc.def"], "abc.def"),
        (["bearer abc"], "abc"),
        (["BEARER   abc  "], "abc"),
        (["Basic dXNlcjpwYXNz"], None),
        (["Token abc"], None),
        (["Bearerabc"], None),
        ([f"Bearer {M2M_SECRET}"], M2M_SECRET),
        (["Bearer YWJj=="], "YWJj=="),
    ],
)
def test_extract_bearer(values: list[str], expected: str | None) -> None:
    assert tokens.extract_bearer(values) == expected


@pytest.mark.parametrize(
    ("values", "code"),
    [
        (["Bearer a", "Bearer a"], BAD_REQUEST),
        (["Bearer a", "Basic b"], BAD_REQUEST),
        (["Bearer"], TOKEN_INVALID),
        (["Bearer   "], TOKEN_INVALID),
        (["Bearer a b"], TOKEN_INVALID),
        (["Bearer a,b"], TOKEN_INVALID),
        (['Bearer "abc"'], TOKEN_INVALID),
        (["Bearer a=b"], TOKEN_INVALID),
        (["Bearer " + "a" * (tokens.MAX_JWT_LENGTH + 1)], TOKEN_INVALID),
    ],
)
def test_extract_bearer_refusals(values: list[str], code: str) -> None:
    with pytest.raises(ProxyError) as info:
        tokens.extract_bearer(values)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("token", "kind"),
    [
        (M2M_SECRET, TokenKind.M2M),
        ("mt_" + "0123456789abcdef" * 3, TokenKind.M2M),  # 48 hex: a secret, not an id
        ("mt_0123456789ABCDEF0123456789ABCDEF", TokenKind.M2M),  # ids are lowercase
        ("oat_" + "x" * 32, TokenKind.OAUTH),
        ("ak_" + "Zz9_-" * 8, TokenKind.API_KEY),
        (jwt_shape(RS, {"sub": "user_1", "sid": "sess_1"}), TokenKind.SESSION_JWT),
        (jwt_shape({**RS, "alg": "RS384"}, {"sub": "user_1"}), TokenKind.SESSION_JWT),
        (jwt_shape({**RS, "alg": "RS512"}, {"sub": "mch_1"}), TokenKind.M2M_JWT),
        (jwt_shape({**RS, "typ": "at+jwt"}, {"sub": "user_1"}), TokenKind.OAUTH_JWT),
        (jwt_shape({**RS, "typ": "application/at+jwt"}, {"sub": "user_1"}), TokenKind.OAUTH_JWT),
    ],
)
def test_classify(token: str, kind: TokenKind) -> None:
    assert tokens.classify(token) is kind


SESSION_CAT, M2M_CAT = tokens.SESSION_JWT_CAT, tokens.M2M_JWT_CAT
TEMPLATE_CAT, IGNORE_CAT = tokens.TEMPLATE_JWT_CAT, tokens.IGNORE_JWT_CAT


@pytest.mark.parametrize(
    ("header", "sub", "expected"),
    [
        # Clerk's signals (@clerk/backend tokens/machine.ts, jwtCategories.ts): sub mch_ first,
        # then typ at+jwt, else a session; cat and typ must agree with the class.
        ({"typ": "JWT", "cat": SESSION_CAT}, "user_1", TokenKind.SESSION_JWT),
        ({"cat": IGNORE_CAT}, "user_1", TokenKind.SESSION_JWT),
        ({}, "user_1", TokenKind.SESSION_JWT),  # minted before categories: accepted
        ({"typ": "JWT", "cat": M2M_CAT}, "mch_1", TokenKind.M2M_JWT),
        ({}, "mch_1", TokenKind.M2M_JWT),
        ({"typ": "at+jwt"}, "user_1", TokenKind.OAUTH_JWT),
        ({"typ": "at+jwt", "cat": IGNORE_CAT}, "user_1", TokenKind.OAUTH_JWT),
        ({"typ": "at+jwt"}, None, TokenKind.OAUTH_JWT),  # sub is checked after the signature
        ({"typ": "JWT"}, 7, TokenKind.SESSION_JWT),  # likewise: refused as "no subject"
        # Mismatches: 401 token_type_mismatch, each naming the class it was judged as.
        ({"cat": TEMPLATE_CAT}, "user_1", "session_token"),  # a JWT-template token
        ({"cat": M2M_CAT}, "user_1", "session_token"),  # M2M category, user subject
        ({"cat": "cl_unknown"}, "user_1", "session_token"),
        ({"typ": "foo"}, "user_1", "session_token"),
        ({"typ": "AT+JWT"}, "user_1", "session_token"),  # typ compared exactly, as Clerk does
        ({"typ": None}, "user_1", "session_token"),
        ({"cat": SESSION_CAT}, "mch_1", "m2m_token"),  # machine subject, session category
        ({"cat": TEMPLATE_CAT}, "mch_1", "m2m_token"),
        ({"cat": IGNORE_CAT}, "mch_1", "m2m_token"),  # Clerk's M2M check allows only its own
        ({"typ": "at+jwt"}, "mch_1", "m2m_token"),  # sub mch_ wins, and typ must be JWT
        ({"typ": "at+jwt", "cat": M2M_CAT}, "user_1", "oauth_token"),  # stricter than Clerk
        ({"typ": "at+jwt", "cat": TEMPLATE_CAT}, "user_1", "oauth_token"),  # stricter
    ],
)
def test_classify_by_clerk_signals(
    header: dict[str, Any], sub: Any, expected: TokenKind | str
) -> None:
    token = jwt_shape({**RS, **header}, {} if sub is None else {"sub": sub})
    if isinstance(expected, TokenKind):
        assert tokens.classify(token) is expected
        return
    with pytest.raises(ProxyError) as info:
        tokens.classify(token)
    assert (info.value.code, info.value.status, info.value.token_type) == (
        TOKEN_TYPE_MISMATCH,
        401,
        expected,
    )


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (M2M_ID, TOKEN_ID_NOT_SECRET),
        ("", TOKEN_INVALID),
        ("mt_" + "é" * 20, TOKEN_INVALID),
        ("mt_" + "a" * 20 + "\n", TOKEN_INVALID),
        (f"{b64(RS)}.{b64_raw(b'[' * 4000)}.c2ln", TOKEN_INVALID),  # nesting bomb
        ("mt_short", TOKEN_INVALID),
        ("mt_" + "a" * 600, TOKEN_INVALID),
        ("mt_" + "a" * 20 + "!", TOKEN_INVALID),
        ("oat_" + "x" * 8, TOKEN_INVALID),
        ("ak_" + "a" * 10, TOKEN_INVALID),
        ("sk_test_" + "a" * 30, TOKEN_INVALID),  # an instance key is not a bearer token
        ("garbage", TOKEN_INVALID),
        ("a.b", TOKEN_INVALID),
        ("a.b.c.d", TOKEN_INVALID),
        ("!!!.###.$$$", TOKEN_INVALID),
        (f"{b64([1])}.{b64({})}.c2ln", TOKEN_INVALID),  # header not an object
        (f"{b64(RS)}.bm90IGpzb24.c2ln", TOKEN_INVALID),  # payload not JSON
        (f"\udcff{b64(RS)}.{b64({'sub': 'user_1'})}.c2ln", TOKEN_INVALID),  # not even UTF-8
        (jwt_shape({"alg": "none"}, {"sub": "user_1"}, ""), TOKEN_INVALID),
        (jwt_shape({"alg": "none"}, {"sub": "user_1"}), TOKEN_INVALID),
        (jwt_shape({"alg": "HS256", "kid": "ins_1"}, {"sub": "user_1"}), TOKEN_INVALID),
        (jwt_shape({"alg": "ES256", "kid": "ins_1"}, {"sub": "user_1"}), TOKEN_INVALID),
        (jwt_shape({"kid": "ins_1"}, {"sub": "user_1"}), TOKEN_INVALID),
        (jwt_shape(RS, {"pad": "x" * tokens.MAX_JWT_LENGTH}), TOKEN_INVALID),
    ],
)
def test_classify_refusals(token: str, code: str) -> None:
    with pytest.raises(ProxyError) as info:
        tokens.classify(token)
    assert info.value.code == code
    assert not token or token not in info.value.message


def test_token_id_message_tells_partner_what_to_send() -> None:
    with pytest.raises(ProxyError) as info:
        tokens.classify(M2M_ID)
    assert info.value.status == 401
    assert info.value.token_type == "m2m_token"
    assert "secret" in info.value.message and "once" in info.value.message
    assert M2M_ID not in info.value.message


@pytest.mark.parametrize(
    ("kind", "token_type", "is_jwt"),
    [
        (TokenKind.M2M, "m2m_token", False),
        (TokenKind.M2M_JWT, "m2m_token", True),
        (TokenKind.OAUTH, "oauth_token", False),
        (TokenKind.OAUTH_JWT, "oauth_token", True),
        (TokenKind.API_KEY, "api_key", False),
        (TokenKind.SESSION_JWT, "session_token", True),
    ],
)
def test_kind_properties(kind: TokenKind, token_type: str, is_jwt: bool) -> None:
    assert (kind.token_type, kind.is_jwt) == (token_type, is_jwt)


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ("mt_" + "a" * 48, True),  # an opaque M2M token
        ("ak_" + "Zx9" * 14, True),  # an API key (or a machine secret key)
        ("oat_" + "q" * 40, True),
        ("mt_0123456789abcdef0123456789abcdef", False),  # the ids: prefix + 32 hex
        ("ak_0123456789abcdef0123456789abcdef", False),
        ("oat_0123456789abcdef0123456789abcdef", False),
        ("mch_2xYpartner000000000000001", False),  # subjects
        ("user_2abc", False),
        ("first.last@example.com", False),  # another issuer's sub with two dots
        ("3f2a9c0e-1b7d-4c55-9e0a-7a1b2c3d4e5f", False),  # another issuer's jti
        ("a\udcff.b.c", False),  # an argument that was not UTF-8 (surrogateescape)
        (
            base64.urlsafe_b64encode(b'{"alg":"ES256","kid":"k"}').decode().rstrip("=")
            + ".eyJzdWIiOiJ4In0.c2ln",
            True,
        ),  # any issuer's JWT
    ],
)
def test_is_secret_tells_a_token_from_its_id(value: str, secret: bool) -> None:
    """`revoke --token-id <the token itself>` is refused (issue 26 row 7), an id never."""
    assert tokens.is_secret(value) is secret
