"""Bearer extraction and token classification by shape. Pure: no I/O, no clock.

Classification decides which verifier a token goes to and refuses, without calling
Clerk, everything that cannot be a Clerk credential. JWT header and payload are only
*inspected* here (unverified), as `jws.peek` read them once for every look before the
signature and the claims after it; the signature is checked in `jws`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Any

from proxy.auth.jws import Unverified, invalid, peek, segment
from proxy.core.errors import (
    BAD_REQUEST,
    TOKEN_ID_NOT_SECRET,
    TOKEN_TYPE_MISMATCH,
    ProxyError,
)
from proxy.core.principal import TokenType

# Session JWTs carrying organisation claims run to a few KiB; nothing Clerk mints
# comes near this, and aiohttp's header limit (16 KiB in app.py) is the outer bound.
MAX_JWT_LENGTH = 8192
MAX_OPAQUE_LENGTH = 512
MIN_OPAQUE_SECRET = 16

# RFC 7235 token68; real bearer tokens never need the trailing '='.
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_M2M_ID = re.compile(r"mt_[0-9a-f]{32}")
# The ids of Clerk's opaque-token objects: the prefix of the secret, then 32 hex digits.
_OBJECT_ID = re.compile(r"(?:mt|oat|ak)_[0-9a-f]{32}")
JWT_ALGORITHMS = frozenset({"RS256", "RS384", "RS512"})
# Clerk's JWT categories: the header `cat` that tells apart the classes of JWT one
# instance key signs (@clerk/backend src/tokens/jwtCategories.ts). "Ignore" is stamped on
# every class by instances that opted out, so it says nothing. Absent: minted before
# categories existed, accepted as Clerk's SDK accepts it.
SESSION_JWT_CAT = "cl_B7d4PD111AAA"
TEMPLATE_JWT_CAT = "cl_B7d4PD222AAA"
M2M_JWT_CAT = "cl_B7d4PD333AAA"
IGNORE_JWT_CAT = "cl_I7d4PD111III"
# RFC 9068 access-token types, compared exactly as Clerk's SDK compares them.
OAUTH_JWT_TYPES = ("at+jwt", "application/at+jwt")
MACHINE_SUB_PREFIX = "mch_"
_ABSENT: Any = object()


class TokenKind(enum.Enum):
    M2M = "m2m"
    OAUTH = "oauth"
    API_KEY = "api_key"
    SESSION_JWT = "session_jwt"
    M2M_JWT = "m2m_jwt"
    OAUTH_JWT = "oauth_jwt"

    @property
    def is_jwt(self) -> bool:
        return self in (TokenKind.SESSION_JWT, TokenKind.M2M_JWT, TokenKind.OAUTH_JWT)

    @property
    def token_type(self) -> TokenType:
        # By value: an enum member's own hash is a Python-level call (a fresh JWT asks twice).
        return _TOKEN_TYPES[self._value_]


_TOKEN_TYPES: dict[str, TokenType] = {
    TokenKind.M2M.value: "m2m_token",
    TokenKind.M2M_JWT.value: "m2m_token",
    TokenKind.OAUTH.value: "oauth_token",
    TokenKind.OAUTH_JWT.value: "oauth_token",
    TokenKind.API_KEY.value: "api_key",
    TokenKind.SESSION_JWT.value: "session_token",
}

_OPAQUE_PREFIXES = (("mt_", TokenKind.M2M), ("oat_", TokenKind.OAUTH), ("ak_", TokenKind.API_KEY))


def _url_safe(text: str) -> bool:
    """Whether `text` is one or more of [A-Za-z0-9_-] (an opaque token's body, a JWT's
    signature). Without a regular expression, whose walk over a signature's 342
    characters cost a tenth of a JWT's reading: with `-` and `_` made letters, ASCII
    `isalnum` is exactly the rest of the class (and false for an empty string)."""
    return text.isascii() and text.replace("-", "a").replace("_", "a").isalnum()


def one_authorization(values: Sequence[str]) -> str | None:
    """The request's one `Authorization` value, None without one. Two are ambiguous on
    every route, public ones included (400): the upstream behind would have to pick
    one, and nginx refuses a second Authorization line too."""
    if len(values) > 1:
        raise ProxyError(BAD_REQUEST, "send exactly one Authorization header")
    return values[0] if values else None


def extract_bearer(values: Sequence[str]) -> str | None:
    """The bearer credential from all `Authorization` header values of a request.

    None when there is none or the scheme is not Bearer (Basic etc. are not ours to
    judge, so the request is simply unauthenticated); two headers are ambiguous (400).
    """
    value = one_authorization(values)
    if value is None:
        return None
    scheme, _, credential = value.strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        return None
    credential = credential.strip(" \t")
    if not credential:
        raise invalid("the Bearer credential is empty")
    if len(credential) > MAX_JWT_LENGTH:
        raise invalid("the Bearer credential is too long")
    if not _TOKEN68.fullmatch(credential):
        raise invalid("the Bearer credential is not a well-formed token")
    return credential


def classify(token: str, parts: Unverified | None = None) -> TokenKind:
    """What kind of Clerk token this is, judged by shape alone; `parts`: a JWT's segments
    when the caller has read them (`jws.peek`; None: read here).

    Raises `TOKEN_ID_NOT_SECRET` for an M2M token id and `TOKEN_INVALID` for anything
    that is not shaped like a Clerk token, so neither costs a Clerk call.
    """
    if len(token) > MAX_JWT_LENGTH:
        raise invalid("the token is too long")
    if _M2M_ID.fullmatch(token):
        raise ProxyError(
            TOKEN_ID_NOT_SECRET,
            "this is an M2M token id (mt_ followed by 32 hex digits), not a token: send the "
            "token secret that Clerk showed once when the token was created",
            token_type="m2m_token",
        )
    for prefix, kind in _OPAQUE_PREFIXES:
        if token.startswith(prefix):
            body = token[len(prefix) :]
            if (
                len(token) > MAX_OPAQUE_LENGTH
                or len(body) < MIN_OPAQUE_SECRET
                or not _url_safe(body)
            ):
                raise invalid(f"malformed {prefix} token", kind.token_type)
            return kind
    # Read segments are three (`peek`): the count, a walk over the whole token, is spared.
    if parts is not None or token.count(".") == 2:
        return _classify_jwt(token, parts or peek(token))
    raise invalid("not a Clerk token (expected mt_, oat_, ak_ or a JWT)")


def is_secret(value: str) -> bool:
    """Whether `value` is a credential itself rather than the id of one: an opaque token of
    Clerk's shapes that is not an object id, or a JWT, whoever signed it (a header that
    decodes to JSON naming an `alg`; a subject such as `first.last@example.com` is not
    one). Revoking "by id" with a secret would store and publish it and match nothing."""
    if _OBJECT_ID.fullmatch(value):
        return False
    if value.count(".") == 2:
        header = segment(value.partition(".")[0])
        return header is not None and "alg" in header
    try:
        classify(value)
    except ProxyError:
        return False
    return True


def _mismatch(message: str, token_type: str | None) -> ProxyError:
    return ProxyError(TOKEN_TYPE_MISMATCH, message, token_type=token_type)


def _classify_jwt(token: str, parts: Unverified | None) -> TokenKind:
    """Clerk's own signals, in the order Clerk's SDK reads them: `sub` starting with
    `mch_` is an M2M JWT, header `typ` at+jwt an OAuth JWT, anything else a session
    token; the header `cat` and `typ` must then agree with that class."""
    if parts is None:
        raise invalid("malformed JWT: its header or payload is not a base64url JSON object")
    header, payload = parts.header, parts.payload
    if not _url_safe(token.rpartition(".")[2]):
        raise invalid("unsigned or malformed JWT")
    # Refused here, before any key lookup: `none` and HMAC (HS/RS confusion) never verify.
    if header.get("alg") not in JWT_ALGORITHMS:
        raise invalid("JWT algorithm not allowed (RS256, RS384 or RS512 only)")
    typ, cat, sub = header.get("typ", _ABSENT), header.get("cat", _ABSENT), payload.get("sub")
    if isinstance(sub, str) and sub.startswith(MACHINE_SUB_PREFIX):
        if cat is not _ABSENT and cat != M2M_JWT_CAT:
            raise _mismatch(
                "the token names a machine (sub mch_...) but its category (header cat) is not "
                "Clerk's M2M token category",
                "m2m_token",
            )
        if typ is not _ABSENT and typ != "JWT":
            raise _mismatch("an M2M JWT must have header typ JWT", "m2m_token")
        return TokenKind.M2M_JWT
    if typ in OAUTH_JWT_TYPES:
        # Stricter than Clerk's SDK, which does not look at an OAuth JWT's category: a
        # token of another class never passes as an OAuth access token.
        if cat in (M2M_JWT_CAT, TEMPLATE_JWT_CAT):
            raise _mismatch(
                "the token says it is an OAuth access token (typ at+jwt) but its category "
                "(header cat) is another Clerk token class",
                "oauth_token",
            )
        return TokenKind.OAUTH_JWT
    if cat is not _ABSENT and cat not in (SESSION_JWT_CAT, IGNORE_JWT_CAT):
        if cat == M2M_JWT_CAT:
            why = "it carries Clerk's M2M token category but its sub is not a machine (mch_...)"
        elif cat == TEMPLATE_JWT_CAT:
            why = "it is a JWT-template token (header cat), which Clerk never accepts as a session"
        else:
            why = "its category (header cat) is none of Clerk's session, M2M or template categories"
        raise _mismatch(f"not a session token: {why}", "session_token")
    if typ is not _ABSENT and typ != "JWT":
        raise _mismatch(
            "unknown JWT type (header typ): JWT for session and M2M tokens, at+jwt for OAuth "
            "access tokens",
            "session_token",
        )
    return TokenKind.SESSION_JWT
