"""Per-class claim rules of Clerk JWTs (proxy/auth/clerk/classes.py), as a table."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.auth.clerk.classes import check_class_claims, jwt_principal
from proxy.auth.tokens import TokenKind
from proxy.config.load import Clerk, build_config
from proxy.core.errors import ProxyError

APP = "https://app.example"
SESSION, M2M, OAUTH = TokenKind.SESSION_JWT, TokenKind.M2M_JWT, TokenKind.OAUTH_JWT


def cfg(**over: Any) -> Clerk:
    raw = {"api_url": "http://127.0.0.1:1", "secret_key": "sk_test_x", **over}
    return build_config(
        {"upstream": {"url": "http://127.0.0.1:1"}, "clerk": raw}, file="t"
    ).clerk


@pytest.mark.parametrize(
    ("kind", "claims", "parties", "refused"),
    [
        (SESSION, {"sub": "user_1"}, [], None),
        (SESSION, {"sub": "user_1", "azp": APP}, [APP], None),
        (SESSION, {"sub": "user_1"}, [APP], "names no authorized party"),  # Clerk: refused
        (SESSION, {"sub": "user_1", "azp": "https://evil.example"}, [APP], "authorized party"),
        (SESSION, {"sub": "user_1", "azp": ["x"]}, [APP], "authorized party"),
        (SESSION, {"sub": "user_1", "sts": "active"}, [], None),
        (SESSION, {"sub": "user_1", "sts": "pending"}, [], "pending"),
        (SESSION, {"sub": "user_1", "sts": "paused"}, [], "not active"),  # stricter than Clerk
        (SESSION, {}, [], "no subject"),
        (SESSION, {"sub": ""}, [], "no subject"),  # stricter: Clerk takes any string
        (SESSION, {"sub": 7}, [], "no subject"),
        (M2M, {"sub": "mch_1"}, [APP], None),  # azp is a session rule only (Clerk 3.25)
        (OAUTH, {"sub": "user_1"}, [APP], None),
        (M2M, {"sub": "mch_1", "sts": "pending"}, [], None),  # sts means nothing here
        (OAUTH, {}, [], "no subject"),
    ],
)
def test_check_class_claims(
    kind: TokenKind, claims: dict[str, Any], parties: list[str], refused: str | None
) -> None:
    config = cfg(authorized_parties=parties)
    if refused is None:
        check_class_claims(kind, claims, config)
        return
    with pytest.raises(ProxyError) as info:
        check_class_claims(kind, claims, config)
    assert (info.value.status, info.value.code, info.value.token_type) == (
        401,
        "token_invalid",
        kind.token_type,
    )
    assert refused in info.value.message


@pytest.mark.parametrize(
    ("kind", "claims", "scopes", "client_id"),
    [
        (OAUTH, {"scp": ["a"], "scope": "b c"}, {"a"}, None),  # scp first, as Clerk's SDK
        (OAUTH, {"scope": "b c", "client_id": "cl_1"}, {"b", "c"}, "cl_1"),
        (OAUTH, {"scp": "a b"}, {"a", "b"}, None),
        (SESSION, {"scp": ["a"], "scope": "b"}, {"a"}, None),
        (SESSION, {"client_id": "cl_1"}, set(), None),  # only OAuth tokens name a client
        (M2M, {"scopes": "a", "scp": ["b"], "scope": "c", "client_id": "x"}, set(), None),
    ],
)
def test_principal_scopes_and_client(
    kind: TokenKind, claims: dict[str, Any], scopes: set[str], client_id: str | None
) -> None:
    principal = jwt_principal(kind, {"sub": "x_1", "exp": 5, **claims})
    assert (principal.scopes, principal.client_id) == (scopes, client_id)
