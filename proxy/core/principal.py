"""Who a request acts as, once its token has been verified.

A `Principal` is the only thing the rest of the request path learns about a token:
the raw token never leaves `tokens`/`verifier`, so it cannot leak into headers,
logs or metrics by accident.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

PrincipalType = Literal["machine", "user", "api_key", "oauth", "anonymous"]
TokenType = Literal["m2m_token", "oauth_token", "api_key", "session_token"]


@dataclass(frozen=True, slots=True)
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
        values = [self.id, self.token_id, self.client_id, *self.scopes]
        return all(value is None or _VISIBLE_ASCII.fullmatch(value) for value in values)

    def claims(self) -> dict[str, Any]:
        return dict(json.loads(self.claims_json)) if self.claims_json else {}


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
