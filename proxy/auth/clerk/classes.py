"""What each class of Clerk JWT must carry, and what of it the proxy may act on. Pure.

`tokens` has already told the class (session, M2M, OAuth) by Clerk's own signals and
`jwks` has checked the signature, expiry and issuer. Here, per class, the rules of
Clerk's JS SDK (@clerk/backend 3.25: jwt/verifyJwt.ts, jwt/assertions.ts,
tokens/authStatus.ts, api/resources/M2MToken.ts and IdPOAuthAccessToken.ts), and the
one rule of this proxy's own: only what Clerk asserts may authorize.

Who chose each claim decides whether it may authorize:
- session JWT: Clerk mints it (custom session claims are the instance's own template);
- OAuth JWT: Clerk's authorization server mints it (`scp`/`scope`, `client_id`);
- M2M JWT: Clerk adds only iss, sub, exp, nbf, iat and jti; every other claim —
  `scopes` and `aud` included — is whatever the token's creator asked for at creation,
  so none of them becomes a scope: they travel as custom claims, as Clerk's SDK returns
  them in `M2MToken.claims`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from proxy.auth.jws import invalid
from proxy.auth.tokens import TokenKind
from proxy.config import model as config
from proxy.core.principal import Principal, PrincipalType, encode_claims

# The claims Clerk sets on every M2M JWT (M2MToken.ts M2M_RESERVED_JWT_CLAIMS).
M2M_RESERVED_CLAIMS: Final = frozenset({"iss", "sub", "exp", "nbf", "iat", "jti"})
# Registered JWT claims and Clerk's own session/OAuth claims; everything else is "custom"
# and goes to the upstream as X-Auth-Claims.
STANDARD_CLAIMS: Final = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "sid",
        "azp",
        "v",
        "fva",
        "sts",
        "pla",
        "fea",
        "scope",
        "scp",
        "client_id",
        "cid",
        "typ",
    }
)
# Session statuses (`sts`) that count as signed in. Clerk's SDK signs out only "pending";
# an unknown status is refused too (stricter: a status Clerk adds later is not assumed
# to mean "signed in").
SIGNED_IN_STATUSES: Final = frozenset({"active"})


def check_class_claims(kind: TokenKind, claims: Mapping[str, Any], cfg: config.Clerk) -> None:
    """The claims one class of Clerk JWT must carry (time claims and iss are `jwks`')."""
    sub = claims.get("sub")
    # Clerk's SDK requires a string; an empty one names nobody, so it is refused too.
    if not isinstance(sub, str) or not sub:
        raise invalid("the token names no subject (sub)", kind.token_type)
    if kind is not TokenKind.SESSION_JWT:
        # `azp` is a browser origin: Clerk checks it on session tokens only (M2M JWTs
        # carry none, and @clerk/backend 3.25 does not pass authorizedParties on).
        return
    if cfg.authorized_parties:
        azp = claims.get("azp")
        # Once authorized parties are configured, a token without azp would bypass them.
        if not isinstance(azp, str) or azp not in cfg.authorized_parties:
            raise invalid(
                "the session token was not issued for an authorized party (azp)"
                if azp is not None
                else "the session token names no authorized party (azp)",
                kind.token_type,
            )
    sts = claims.get("sts")
    if sts is not None and sts not in SIGNED_IN_STATUSES:
        raise invalid(
            "the session is pending: the user has a session task to finish (sts), and Clerk "
            "counts such a session as signed out"
            if sts == "pending"
            else "the session status (sts) is not active",
            kind.token_type,
        )


def _scopes(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(s for s in value if isinstance(s, str))
    return frozenset()


def _granted(claims: Mapping[str, Any]) -> frozenset[str]:
    """`scp` before `scope`, as Clerk's SDK reads an OAuth access token."""
    if "scp" in claims:
        return _scopes(claims["scp"])
    return _scopes(claims.get("scope"))


def _str_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


def jwt_principal(kind: TokenKind, claims: Mapping[str, Any]) -> Principal:
    """Verified claims of one class → Principal."""
    ptype: PrincipalType
    client_id: str | None = None
    if kind is TokenKind.M2M_JWT:
        ptype = "machine"
        scopes: frozenset[str] = frozenset()  # see the module docstring: never the creator's
        token_id = _str_claim(claims, "jti")
        custom = {k: v for k, v in claims.items() if k not in M2M_RESERVED_CLAIMS}
    else:
        scopes = _granted(claims)
        # (A session token carries none: told by one subset test, without the loop.)
        custom = (
            {}
            if claims.keys() <= STANDARD_CLAIMS
            else {k: v for k, v in claims.items() if k not in STANDARD_CLAIMS}
        )
        if kind is TokenKind.OAUTH_JWT:
            ptype = "oauth"
            token_id = _str_claim(claims, "jti")
            client_id = _str_claim(claims, "client_id")
        else:
            ptype = "user"
            token_id = _str_claim(claims, "sid") or _str_claim(claims, "jti")
    exp = claims.get("exp")
    return Principal(
        type=ptype,
        id=_str_claim(claims, "sub"),
        token_type=kind.token_type,
        token_id=token_id,
        scopes=scopes,
        claims_json=encode_claims(custom),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
        client_id=client_id,
    )
