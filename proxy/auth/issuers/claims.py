"""An issuer's verified claims → a Principal, or a refusal. Pure.

What its JWTs must hold to (`rules`: `iss` exactly the configured issuer, `aud` naming
one of the configured audiences, the issuer's leeway and required claim values, such as
Keycloak's payload `typ: Bearer`) is checked on the one JWT path (`jws`). Then the
claim mapping: a client-credentials token (any `machine` rule matches) is a `machine`
principal whose id is the client id; any other token acts for a user (`oauth`, id =
`sub`). An introspection answer naming a client and no `sub` is that client's own
token, a machine whatever the rules say (RFC 7662 leaves `sub` out of it: oidc-provider
does). Only the configured `forward` claims reach the upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from proxy.auth.claims_json import strings
from proxy.auth.jws import Rules
from proxy.config.model import ClaimMapping, Issuer, MachineRule
from proxy.core.errors import TOKEN_INVALID, ProxyError
from proxy.core.principal import Principal, TokenType, encode_claims

# A refusal before the mapping knows whether the token was a machine's.
REFUSED_AS: Final[TokenType] = "oauth_token"


def _invalid(message: str) -> ProxyError:
    return ProxyError(TOKEN_INVALID, message, token_type=REFUSED_AS)


def rules(cfg: Issuer) -> Rules:
    return Rules(
        algorithms=cfg.algorithms,
        leeway=cfg.leeway_seconds,
        unknown_key=f"the token is signed by a key issuer {cfg.name} does not publish",
        issuers=(cfg.issuer,),
        audiences=cfg.audiences,
        require=cfg.claims.require,
    )


def _first_string(claims: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _matches(rule: MachineRule, claims: Mapping[str, Any], client_id: str | None) -> bool:
    if rule.sub is not None:
        return client_id is not None and claims.get("sub") == rule.sub.replace(
            "{client_id}", client_id
        )
    value = claims.get(rule.claim or "")
    if rule.value is None:
        return value not in (None, "", [])
    return rule.value in strings(value)


def _scopes(claims: Mapping[str, Any], mapping: ClaimMapping) -> frozenset[str]:
    for name in mapping.scopes:
        value = claims.get(name)
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list):
            return frozenset(s for s in value if isinstance(s, str) and s)
    return frozenset()


def map_principal(
    claims: Mapping[str, Any], cfg: Issuer, *, introspected: bool = False
) -> Principal:
    """The Principal for claims that hold to `rules(cfg)` (or an introspection answer's
    checks: `introspected`)."""
    mapping = cfg.claims
    client_id = _first_string(claims, mapping.client_id)
    machine = any(_matches(rule, claims, client_id) for rule in mapping.machine)
    if introspected and not machine and client_id is not None and claims.get("sub") is None:
        # RFC 7662 §2.2: `sub` names the resource owner who authorized the token. An answer
        # that names a client and no owner is a client-credentials token, whose owner is
        # the client itself (RFC 6749 §4.4). A user's token names its user there, so no
        # user token becomes a machine by this.
        machine = True
    token_type: TokenType
    if machine:
        if client_id is None:
            raise _invalid("a client-credentials token that names no client")
        ptype, pid, token_type = "machine", client_id, "m2m_token"
    else:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _invalid("the token names no subject (sub)")
        ptype, pid, token_type = "oauth", sub, "oauth_token"
    jti = claims.get("jti")
    exp = claims.get("exp")
    forward = {name: claims[name] for name in mapping.forward if name in claims}
    principal = Principal(
        type=ptype,  # type: ignore[arg-type]
        id=pid,
        token_type=token_type,
        token_id=jti if isinstance(jti, str) and jti else None,
        scopes=_scopes(claims, mapping),
        claims_json=encode_claims(forward),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
        client_id=client_id,
        issuer=cfg.name,
    )
    if not principal.header_safe():
        raise ProxyError(
            TOKEN_INVALID,
            "the token's client, subject, id or scopes cannot be passed on in a header",
            token_type=token_type,
        )
    return principal
