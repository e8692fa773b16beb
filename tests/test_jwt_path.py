"""One JWT path for Clerk and every issuer (issue 27 point 1).

Through the proxy: a header the issuer path refuses (RFC 8725 §3.10 and RFC 7515 §4.1.11:
`crit` we do not understand, a key or key location carried in the header) is refused on
a Clerk JWT of each class with the same answer as on an issuer's JWT, though Clerk's
instance key signed it. And PyJWT's decoding is called from one module of the proxy."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support_issuers import API, IssuerStack, issuer_stack

__all__ = ["issuer_stack"]  # the fixture, used by name

ROOT = Path(__file__).resolve().parent.parent

HEADERS: list[tuple[str, dict[str, Any]]] = [
    ("crit", {"crit": ["exp"]}),
    # An extension PyJWT itself understands: refused all the same, we understand none.
    ("crit", {"crit": ["b64"], "b64": True}),
    ("jwk", {"jwk": "the signer's own public key"}),  # filled in per test
    ("jku", {"jku": "https://keys.attacker.example/jwks"}),
    ("x5u", {"x5u": "https://keys.attacker.example/cert.pem"}),
    ("x5c", {"x5c": ["MIIB"]}),
]


def clerk_tokens(s: IssuerStack) -> dict[str, str]:
    clerk = s.clerk
    return {
        "session_token": clerk.mint_session_jwt("user_2abc", expires_in=60),
        "m2m_token": clerk.mint_m2m_jwt(clerk.create_machine("partner").id, expires_in=600),
        "oauth_token": clerk.mint_oauth_jwt("user_2abc", scopes=["read"]),
    }


def with_header(s: IssuerStack, token: str, extra: dict[str, Any]) -> str:
    """The same token re-signed by the instance key, its header extended by `extra`."""
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return s.clerk.mint_jwt(claims, {**header, **extra})


def issuer_token(s: IssuerStack, extra: dict[str, Any]) -> str:
    emu = s.issuers["authgear"]
    now = time.time()
    claims = {"iss": emu.issuer, "aud": API, "iat": now, "exp": now + 600, "jti": "j1",
              "client_id": "svc-a", "sub": "client_id_svc-a", "scope": "scores:read"}
    return emu.mint(claims, {"typ": "at+jwt", **extra})


def fill(s: IssuerStack, extra: dict[str, Any]) -> dict[str, Any]:
    if "jwk" in extra:
        return {"jwk": s.clerk.public_jwk}
    return extra


@pytest.mark.parametrize(("name", "extra"), HEADERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(HEADERS)])
async def test_a_clerk_jwt_with_a_header_the_issuer_path_refuses_is_refused_alike(
    issuer_stack: Any, name: str, extra: dict[str, Any]
) -> None:
    s: IssuerStack = await issuer_stack()
    extra = fill(s, extra)
    status, _, body = await s.get("/api/v1/matches", issuer_token(s, extra))
    issuer_answer = (status, body["error"]["code"])
    assert issuer_answer == (401, "token_invalid")
    assert name in body["error"]["message"]
    for token_type, token in clerk_tokens(s).items():
        assert (await s.get("/api/v1/matches", token))[0] == 200, token_type  # the control
        status, _, body = await s.get("/api/v1/matches", with_header(s, token, extra))
        assert (status, body["error"]["code"]) == issuer_answer, (token_type, body)
        assert name in body["error"]["message"], (token_type, body)


# PyJWT's calls that read a token or check its signature.
DECODING = frozenset(
    {"decode", "decode_complete", "get_unverified_header", "api_jws", "api_jwt", "PyJWS", "PyJWT",
     "algorithms", "get_default_algorithms", "get_algorithm_by_name"}
)


def decoding_calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "jwt" and node.attr in DECODING:
                found.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jwt"):
            found.update(a.name for a in node.names if a.name in DECODING)
            if node.module in ("jwt.api_jws", "jwt.api_jwt"):
                found.add(node.module)
    return found


def test_pyjwt_decodes_in_one_module() -> None:
    """Every JWT the proxy verifies goes through one header check, one signature step and
    one claims check: PyJWT reads tokens and checks signatures in `auth/jws.py` only. The Clerk and
    issuer emulators (proxy/emulator: they stand in for Clerk and an issuer, and share no
    code with the proxy) decode as those servers do, and are not counted."""
    callers = {
        str(path.relative_to(ROOT)): calls
        for path in sorted((ROOT / "proxy").rglob("*.py"))
        if "emulator" not in path.parts and (calls := decoding_calls(path))
    }
    assert list(callers) == ["proxy/auth/jws.py"], callers
