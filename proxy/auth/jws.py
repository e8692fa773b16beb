"""The signature half of JWT verification, shared by every issuer: which header a token
may have, whether its algorithm fits the key, and the signature check itself.

Claims (time, audience, issuer) are judged by the caller, against its own clock.
The header rules, after RFC 8725 (JWT best current practice) and RFC 7515:
- `alg` must be on the issuer's allow-list; `none` and HMAC never are (an HS256 token
  "signed" with a public key is the classic confusion attack), whatever the config says.
- a token never brings its own key: `jku`, `x5u`, `jwk` and `x5c` are refused when the
  caller asks (other issuers), and never followed in any case;
- `crit` names extensions the receiver must understand; we understand none, so refuse;
- the key comes from the issuer's own set by `kid`, and must be of the type the
  algorithm needs (RSA ≥ 2048 bits for RS*/PS*, the matching EC curve for ES*, an
  Edwards curve for EdDSA) and, when the JWK pins an `alg`, that one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from proxy.auth.claims_json import loads
from proxy.auth.keyset import Key
from proxy.core.errors import TOKEN_INVALID, ProxyError

# The asymmetric algorithms an issuer may be allowed, and the key each needs: (kty, crv).
ALGORITHMS: Final[dict[str, tuple[str, str | None]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),  # Ed25519 or Ed448
}
EMBEDDED_KEY_HEADERS: Final = ("jku", "x5u", "jwk", "x5c")
MIN_RSA_BITS: Final = 2048


def invalid(message: str, token_type: str | None = None) -> ProxyError:
    return ProxyError(TOKEN_INVALID, message, token_type=token_type)


def check_header(
    header: Mapping[str, Any],
    algorithms: Iterable[str],
    *,
    refuse_embedded_keys: bool,
    token_type: str | None = None,
) -> tuple[str, str]:
    """(alg, kid) of a header that may be verified; raises 401 `token_invalid` otherwise."""
    alg = header.get("alg")
    allowed = [a for a in algorithms if a in ALGORITHMS]
    if not isinstance(alg, str) or alg not in allowed:
        raise invalid(f"JWT algorithm not allowed ({', '.join(allowed)} only)", token_type)
    if "crit" in header:
        raise invalid("the JWT names critical header extensions (crit) we do not know", token_type)
    if refuse_embedded_keys:
        carried = [name for name in EMBEDDED_KEY_HEADERS if name in header]
        if carried:
            raise invalid(
                f"the JWT header carries its own key or key location ({', '.join(carried)}); "
                "keys come only from the issuer's published key set",
                token_type,
            )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise invalid("the JWT names no signing key (kid)", token_type)
    return alg, kid


def key_misfit(key: Key, alg: str) -> str | None:
    """Why `key` cannot verify an `alg` signature, or None when it can."""
    kty, crv = ALGORITHMS[alg]
    if key.alg is not None and key.alg != alg:
        return f"the key {key.kid} is published for {key.alg}, the token says {alg}"
    if key.kty != kty or (crv is not None and key.crv != crv):
        return f"the key {key.kid} ({key.kty} {key.crv or ''}) cannot verify {alg}".replace(
            " )", ")"
        )
    if kty == "RSA" and getattr(key.key, "key_size", 0) < MIN_RSA_BITS:
        return f"the key {key.kid} is an RSA key shorter than {MIN_RSA_BITS} bits"
    return None


def verify_signature(
    token: str, key: Key, alg: str, token_type: str | None = None
) -> dict[str, Any]:
    """The claims of a token whose signature `key` verifies under `alg`. PyJWT's JWS layer
    checks the signature only; the payload is read here as strict JSON (`claims_json`:
    PyJWT's reader takes NaN and Infinity) and the claims are the caller's to judge,
    against its injectable clock."""
    import jwt

    misfit = key_misfit(key, alg)
    if misfit is not None:
        raise invalid(misfit, token_type)
    try:
        payload = jwt.api_jws.decode_complete(token, key=key.key, algorithms=[alg])["payload"]
    except jwt.PyJWTError:
        raise invalid("the JWT signature does not verify", token_type) from None
    try:
        claims = loads(payload)
    except (ValueError, RecursionError):
        claims = None
    if not isinstance(claims, dict):
        raise invalid(
            "malformed JWT: its claims are not a JSON object (RFC 8259: no NaN or Infinity)",
            token_type,
        )
    return claims
