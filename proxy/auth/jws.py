"""JWT verification, one path for Clerk's instance and every other issuer: the header,
the key it names, the signature, and the claims against the caller's clock. What a
verified token means is each issuer's policy on top (`clerk_jwt`, `issuer_claims`).

The header rules, after RFC 8725 (JWT best current practice) and RFC 7515:
- `alg` must be on the issuer's allow-list; `none` and HMAC never are (an HS256 token
  "signed" with a public key is the classic confusion attack), whatever the config says.
- a token never brings its own key: `jku`, `x5u`, `jwk` and `x5c` are refused, never
  followed;
- `crit` names extensions the receiver must understand; we understand none, so refuse;
- the key comes from the issuer's own set by `kid`, and must be of the type the
  algorithm needs (RSA ≥ 2048 bits for RS*/PS*, the matching EC curve for ES*, an
  Edwards curve for EdDSA) and, when the JWK pins an `alg`, that one.
The claims (RFC 7519, RFC 9068 §4): the payload strict JSON (`claims_json`); `iss`,
`aud` and required values as the issuer's `Rules` say; `exp` required; `exp`, `nbf`,
`iat` NumericDates, with the issuer's leeway.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, final

from proxy.auth.claims_json import loads, numeric_date, strings
from proxy.auth.keyset import Key
from proxy.core.errors import TOKEN_EXPIRED, TOKEN_INVALID, ProxyError

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
_REFUSED_HEADERS: Final = frozenset({"crit", *EMBEDDED_KEY_HEADERS})
MIN_RSA_BITS: Final = 2048
MAX_SEGMENT: Final = 6144
# A remainder of 1 is no whole byte (no character is canonical there); 2 leaves 4 spare
# bits in the last character, 3 leaves 2: its value a multiple of 16, or of 4.
_CANONICAL_LAST: Final = ("", "", "AQgw", "AEIMQUYcgkosw048")
_PADDING: Final = (b"", b"", b"==", b"=")
# base64url's two own characters to base64's, and base64's own (and its padding) to a
# character of neither.
_STANDARD: Final = bytes.maketrans(b"-_+/=", b"+/...")


@dataclass(frozen=True, slots=True)
class Rules:
    """What one issuer's JWTs must hold to."""

    algorithms: tuple[str, ...]
    leeway: float
    unknown_key: str  # the refusal of a kid the issuer's set does not hold
    issuers: tuple[str, ...] = ()  # the `iss` values accepted; empty: not checked
    audiences: tuple[str, ...] | None = None  # None: `aud` is not checked
    require: tuple[tuple[str, Any], ...] = ()  # claim values every token must carry


def invalid(message: str, token_type: str | None = None) -> ProxyError:
    return ProxyError(TOKEN_INVALID, message, token_type=token_type)


def _b64url(segment: str) -> bytes | None:
    """A segment's bytes (base64url without padding, RFC 7515 §2); None for anything else,
    a non-canonical spelling too (last bits that decode to nothing: one token, one string).
    The spelling is canonical when the bits its last character carries past the last
    whole byte are zero: `_CANONICAL_LAST`, by the length's remainder. The alphabet is
    checked by the decoder itself (strict mode), once `_STANDARD` has made every
    character outside base64url one outside base64 too."""
    spare = len(segment) % 4
    if not segment or not segment.isascii():  # (a lone surrogate would not even encode)
        return None
    if spare and segment[-1] not in _CANONICAL_LAST[spare]:
        return None
    try:
        return binascii.a2b_base64(
            segment.encode().translate(_STANDARD) + _PADDING[spare], strict_mode=True
        )
    except binascii.Error:
        return None


def segment(text: str, strict: bool = False) -> dict[str, Any] | None:
    """The JSON object a segment holds (`strict`: refusing NaN and Infinity, else reading
    them as `json.loads` does); None for anything else."""
    raw = _b64url(text) if len(text) <= MAX_SEGMENT else None
    if raw is None:
        return None
    try:
        # An object in UTF-8 is what every issuer sends: read as text at once, where
        # `json.detect_encoding` would say UTF-8 too (no BOM, no NUL byte second).
        utf8 = raw[:1] == b"{" and raw[1:2] != b"\0"
        value = loads(raw.decode("utf-8", "surrogatepass") if utf8 else raw, strict=strict)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@final
class Unverified:
    """A compact JWT's header and payload, each segment read once for everyone who looks
    before the signature is checked (routing by `iss`, Clerk's classes) and for the claims
    after it: the signature covers these very bytes. A plain class, not a dataclass: one
    is built per fresh JWT, and a compiled class builds in a tenth of the time."""

    __slots__ = ("header", "payload", "strict")

    def __init__(self, header: dict[str, Any], payload: dict[str, Any], strict: bool) -> None:
        # Read, never written: a header is shared by every token that carries it (`peek`).
        self.header: Final = header
        self.payload: Final = payload
        # The payload is strict JSON (`claims_json`): else a NaN or Infinity was read into
        # it, and the token is refused once its signature holds (`verify_signature`).
        self.strict: Final = strict


# A header segment is the same for every token one key of an issuer signs: read once per
# process (`peek`), its object shared. Bounded: short segments only, emptied when full.
_HEADERS: Final[dict[str, dict[str, Any]]] = {}
MAX_HEADERS: Final = 128
MAX_HEADER_MEMO: Final = 512


def peek(token: str) -> Unverified | None:
    """The unverified header and payload of a compact JWT; None when it is not one. The
    payload is read strictly, and leniently only when that fails, so that a token
    carrying NaN is still routed by its `iss` and reaches its refusal."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    text = parts[0]
    header = _HEADERS.get(text)
    if header is None:
        header = segment(text)
        if header is None:
            return None
        if len(text) <= MAX_HEADER_MEMO:
            if len(_HEADERS) >= MAX_HEADERS:
                _HEADERS.clear()
            _HEADERS[text] = header
    strict = True
    payload = segment(parts[1], strict=True)
    if payload is None:
        strict, payload = False, segment(parts[1])
        if payload is None:
            return None
    return Unverified(header, payload, strict)


def check_header(
    header: Mapping[str, Any], algorithms: Collection[str], token_type: str | None = None
) -> tuple[str, str]:
    """(alg, kid) of a header that may be verified; raises 401 `token_invalid` otherwise."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg not in ALGORITHMS:
        allowed = [a for a in algorithms if a in ALGORITHMS]
        raise invalid(f"JWT algorithm not allowed ({', '.join(allowed)} only)", token_type)
    if not _REFUSED_HEADERS.isdisjoint(header):
        if "crit" in header:
            raise invalid(
                "the JWT names critical header extensions (crit) we do not know", token_type
            )
        carried = [name for name in EMBEDDED_KEY_HEADERS if name in header]
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
        return f"the key {key.kid} is published for {key.alg}, the token's algorithm is {alg}"
    if key.kty != kty or (crv is not None and key.crv != crv):
        return f"the key {key.kid} ({key.kty} {key.crv or ''}) cannot verify {alg}".replace(
            " )", ")"
        )
    if kty == "RSA" and getattr(key.key, "key_size", 0) < MIN_RSA_BITS:
        return f"the key {key.kid} is an RSA key shorter than {MIN_RSA_BITS} bits"
    return None


@functools.cache
def _algorithms() -> dict[str, Any]:
    import jwt

    return {name: jwt.algorithms.get_default_algorithms()[name] for name in ALGORITHMS}


def verify_signature(
    token: str, key: Key, alg: str, parts: Unverified, token_type: str | None = None
) -> dict[str, Any]:
    """The claims of a token whose signature `key` verifies under `alg`, not judged yet.
    PyJWT's algorithm does the signature check alone: its `decode` would parse the token
    again (three times the check's CPU)."""
    misfit = key_misfit(key, alg)
    if misfit is not None:
        raise invalid(misfit, token_type)
    signing_input, _, signature = token.rpartition(".")
    raw = _b64url(signature)
    if raw is None or not _algorithms()[alg].verify(signing_input.encode(), key.key, raw):
        raise invalid("the JWT signature does not verify", token_type)
    if not parts.strict:
        raise invalid(
            "malformed JWT: its claims are not a JSON object (RFC 8259: no NaN or Infinity)",
            token_type,
        )
    return parts.payload


def _date(claims: Mapping[str, Any], name: str, token_type: str | None) -> float | None:
    try:
        return numeric_date(claims.get(name))
    except ValueError as exc:
        raise invalid(f"the token's {name} claim {exc}", token_type) from None


def check_claims(
    claims: Mapping[str, Any],
    rules: Rules,
    now: float,
    token_type: str | None = None,
    *,
    present_only: bool = False,
) -> None:
    """Raises 401 `token_invalid`/`token_expired` unless the claims hold to `rules` at `now`.
    `present_only`: an RFC 7662 answer, where every claim is optional and those there
    must hold (its caller has checked their shapes: a malformed one is the issuer's
    failure, not the token's)."""
    iss = claims.get("iss")
    if rules.issuers and iss not in rules.issuers and (iss is not None or not present_only):
        raise invalid(f"the token was not issued by {rules.issuers[0]}", token_type)
    if rules.audiences is not None and (not present_only or claims.get("aud") is not None):
        audiences = strings(claims.get("aud"))
        if not audiences:
            raise invalid("the token names no audience (aud)", token_type)
        if not any(audience in rules.audiences for audience in audiences):
            raise invalid(
                f"the token is for another API (aud); this API is {', '.join(rules.audiences)}",
                token_type,
            )
    exp = _date(claims, "exp", token_type)
    if exp is None:
        if not present_only:
            raise invalid("the token has no expiry", token_type)
    elif now > exp + rules.leeway:
        raise ProxyError(TOKEN_EXPIRED, "the token has expired", token_type=token_type)
    nbf = _date(claims, "nbf", token_type)
    if nbf is not None and now + rules.leeway < nbf:
        raise invalid("the token is not valid yet", token_type)
    iat = _date(claims, "iat", token_type)
    if iat is not None and now + rules.leeway < iat:
        raise invalid("the token was issued in the future", token_type)
    for name, value in rules.require:
        if claims.get(name) != value:
            raise invalid(f"the token's {name} claim is not {value!r}", token_type)


def _read(
    token: str, parts: Unverified | None, rules: Rules, token_type: str | None
) -> tuple[Unverified, str, str]:
    """The token's segments (`parts`: as the caller read them; None: read here) and the
    (alg, kid) of a header that may be verified."""
    if parts is None:
        parts = peek(token)
        if parts is None:
            raise invalid("malformed JWT", token_type)
    alg, kid = check_header(parts.header, rules.algorithms, token_type)
    return parts, alg, kid


def _judged(
    token: str,
    parts: Unverified,
    alg: str,
    found: Key | None,
    rules: Rules,
    now: float,
    token_type: str | None,
) -> dict[str, Any]:
    if found is None:
        raise invalid(rules.unknown_key, token_type)
    claims = verify_signature(token, found, alg, parts, token_type)
    check_claims(claims, rules, now, token_type)
    return claims


async def verify(
    token: str,
    parts: Unverified | None,
    rules: Rules,
    key: Callable[[str], Awaitable[Key | None]],
    now: Callable[[], float],
    token_type: str | None = None,
) -> dict[str, Any]:
    """The claims of a JWT whose header, key, signature and claims hold to `rules`; `key`
    finds the issuer's key by kid (None: not in its set), fetching it when it may."""
    parts, alg, kid = _read(token, parts, rules, token_type)
    found = await key(kid)
    return _judged(token, parts, alg, found, rules, now(), token_type)


def verify_held(
    token: str,
    parts: Unverified | None,
    rules: Rules,
    held: Callable[[str], Key | None],
    now: Callable[[], float],
    token_type: str | None = None,
) -> dict[str, Any] | None:
    """`verify` with the keys held now (`held`: None when the kid is not among them):
    nothing awaited. None: the kid's key is not held, and only `verify` may fetch it."""
    parts, alg, kid = _read(token, parts, rules, token_type)
    found = held(kid)
    return None if found is None else _judged(token, parts, alg, found, rules, now(), token_type)
