"""Who a request acts as, once its token has been verified.

A `Principal` is the only thing the rest of the request path learns about a token:
the raw token never leaves `tokens`/`verifier`, so it cannot leak into headers,
logs or metrics by accident.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

PrincipalType = Literal["machine", "user", "api_key", "oauth", "anonymous"]
TokenType = Literal["m2m_token", "oauth_token", "api_key", "session_token"]


# Keyword-only: two adjacent `str | None` fields cannot be swapped unseen by a positional
# call. A field is declared twice, here and in `FIELDS` below (checked at import).
@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    type: PrincipalType
    id: str | None = None
    token_type: TokenType | None = None
    token_id: str | None = None
    scopes: frozenset[str] = frozenset()
    # Compact ASCII JSON of the custom claims, computed once at verification so the
    # hot path (one header per request) never re-encodes it.
    claims_json: str | None = None
    # Unix seconds; None means the token carries no expiry of its own.
    expires_at: float | None = None
    # The OAuth application (client) an OAuth access token was issued to, as Clerk states
    # it (verify answer or the token's `client_id` claim); None for every other kind.
    client_id: str | None = None
    # The configured name of the issuer that vouched for it (`issuers[].name`); None
    # for Clerk. Route rules are per issuer: the same scope from two is not the same.
    issuer: str | None = None

    @property
    def is_anonymous(self) -> bool:
        return self.type == "anonymous"

    def header_safe(self) -> bool:
        """Whether every identity value can travel in a header as it is: visible ASCII,
        no space (scopes are joined by spaces). Claims travel as ASCII JSON, always safe.
        A value that is not would let whoever minted it inject header fields upstream."""
        for name in _TEXT:
            value = getattr(self, name)
            if value is not None and not _VISIBLE_ASCII.fullmatch(value):
                return False
        return all(_VISIBLE_ASCII.fullmatch(scope) for scope in self.scopes)

    def claims(self) -> dict[str, Any]:
        return dict(json.loads(self.claims_json)) if self.claims_json else {}


# How a field's value is typed, checked and written wherever it travels:
# - `principal_type`, `token_type`: one of `PrincipalType`, `TokenType` (or None);
# - `text`: str or None, visible ASCII without spaces (`header_safe`), as is everywhere;
# - `scopes`: a frozenset of `text`; space-separated in a header, a sorted list in JSON;
# - `claims`: compact ASCII JSON of an object, or None; the object itself in a CONNECT;
# - `time`: Unix seconds or None.
Kind = Literal["principal_type", "token_type", "text", "scopes", "claims", "time"]


@dataclass(frozen=True, slots=True)
class Field:
    """One field of `Principal` and where it travels. Header rendering (`http.headers`),
    a Socket.IO CONNECT's `auth.principal` (`realtime.socketio`), the cache's records
    (`auth.cache.entries`) and the shared level's entries (`auth.shared.codec`) are all
    derived from `FIELDS`: a new field is one line there and one attribute above."""

    name: str  # the Principal attribute
    kind: Kind
    # The upstream header's name after the configured prefix (`X-Auth-`), sent when the
    # value is not None or empty; None: never sent upstream.
    header: str | None = None
    # Its key in a CONNECT's `auth.principal`, sent when the value is not None or empty,
    # or always (null, [] or {}) when `connect_always`; None: never sent.
    connect: str | None = None
    connect_always: bool = False


# In the order the headers and `auth.principal` keys are written (their bytes are the
# spec's: a new field goes at the end, and `connect_always` stays the original six's).
FIELDS: Final[tuple[Field, ...]] = (
    Field("type", "principal_type", "Principal-Type", "type", connect_always=True),
    Field("id", "text", "Principal-Id", "id", connect_always=True),
    Field("token_type", "token_type", "Token-Type", "token_type", connect_always=True),
    Field("token_id", "text", "Token-Id", "token_id", connect_always=True),
    Field("scopes", "scopes", "Scopes", "scopes", connect_always=True),
    Field("claims_json", "claims", "Claims", "claims", connect_always=True),
    Field("expires_at", "time"),
    Field("client_id", "text"),
    Field("issuer", "text", "Issuer", "issuer"),
)

if tuple(f.name for f in FIELDS) != tuple(f.name for f in dataclasses.fields(Principal)):
    raise ImportError("proxy.core.principal: FIELDS and Principal's attributes disagree")

_TEXT: Final = tuple(f.name for f in FIELDS if f.kind == "text")
_VISIBLE_ASCII = re.compile(r"[!-~]+")

ANONYMOUS = Principal(type="anonymous")


def encode_claims(claims: Mapping[str, Any] | None) -> str | None:
    """Compact ASCII JSON (safe in an HTTP header), or None for no/empty claims."""
    if not claims:
        return None
    return json.dumps(claims, separators=(",", ":"), ensure_ascii=True, sort_keys=True)


class Recent:
    """The last cache hit on one client connection.

    A keep-alive partner sends the same token on every request: the next request is then
    answered by comparing it with this one, instead of hashing it and looking it up.
    The verifier that filled it decides whether it still holds (same verifier, same
    token, before the cache entry's own freshness deadline). It holds the connection's
    own token for as long as the connection lives, no longer than its request head."""

    __slots__ = ("fresh_until", "owner", "principal", "token")

    def __init__(self) -> None:
        self.owner: object = None
        self.token = ""
        self.principal = ANONYMOUS
        self.fresh_until = 0.0


class Verifier(Protocol):
    """Turns a bearer token into a Principal or raises `errors.ProxyError`.

    `client_ip` feeds the per-IP verification budget. Implementations must never put
    the token into an exception message, a log line or a metric label.
    """

    async def verify(self, token: str, client_ip: str) -> Principal: ...

    def cached(self, token: str, recent: Recent | None = None) -> Principal | None:
        """The Principal when `verify` would answer from its cache without waiting, else
        None (then `verify` decides). Never raises, never calls out. `recent` is the
        calling connection's memo, read and refreshed when given."""
        ...
