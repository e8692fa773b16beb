"""Who a request acts as, once its token has been verified.

A `Principal` is the only thing the rest of the request path learns about a token:
the raw token never leaves `tokens`/`verifier`, so it cannot leak into headers,
logs or metrics by accident.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, final

PrincipalType = Literal["machine", "user", "api_key", "oauth", "anonymous"]
TokenType = Literal["m2m_token", "oauth_token", "api_key", "session_token"]


_NO_SCOPES: Final[frozenset[str]] = frozenset()


@final
class Principal:
    """Keyword-only: two adjacent `str | None` fields cannot be swapped unseen by a
    positional call. Read-only: one principal is shared by cache entries and requests, so
    its attributes are `Final` (compiled, assigning one raises AttributeError; `mypy`
    refuses it in either build). Equal, hashed and shown by its fields, as the frozen
    dataclass it was. A plain class, not a dataclass: one is built per verified token, and
    compiled, a dataclass builds through its Python-level `__init__` (~14k instructions).
    A field is declared here (slot, parameter, attribute) and in `FIELDS` below: checked
    at import."""

    __slots__ = (
        "claims_json",
        "client_id",
        "expires_at",
        "id",
        "issuer",
        "scopes",
        "token_id",
        "token_type",
        "type",
    )

    def __init__(
        self,
        *,
        type: PrincipalType,
        id: str | None = None,
        token_type: TokenType | None = None,
        token_id: str | None = None,
        scopes: frozenset[str] = _NO_SCOPES,
        claims_json: str | None = None,
        expires_at: float | None = None,
        client_id: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self.type: Final = type
        self.id: Final = id
        self.token_type: Final = token_type
        self.token_id: Final = token_id
        self.scopes: Final = scopes
        # Compact ASCII JSON of the custom claims, computed once at verification so the
        # hot path (one header per request) never re-encodes it.
        self.claims_json: Final = claims_json
        # Unix seconds; None means the token carries no expiry of its own.
        self.expires_at: Final = expires_at
        # The OAuth application (client) an OAuth access token was issued to, as Clerk
        # states it (verify answer or the token's `client_id` claim); None for every other
        # kind.
        self.client_id: Final = client_id
        # The configured name of the issuer that vouched for it (`issuers[].name`); None
        # for Clerk. Route rules are per issuer: the same scope from two is not the same.
        self.issuer: Final = issuer

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Principal):
            return NotImplemented
        return bool(_values(self) == _values(other))

    def __hash__(self) -> int:
        return hash(_values(self))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(_NAMES, _values(self), strict=True))
        return f"Principal({shown})"

    def replace(self, **changes: Any) -> Principal:
        """A copy with `changes` (by field name), as `dataclasses.replace` made one."""
        return Principal(**{**dict(zip(_NAMES, _values(self), strict=True)), **changes})

    @property
    def is_anonymous(self) -> bool:
        return self.type == "anonymous"

    def header_safe(self) -> bool:
        """Whether every identity value can travel in a header as it is: visible ASCII,
        no space (scopes are joined by spaces). Claims travel as ASCII JSON, always safe.
        A value that is not would let whoever minted it inject header fields upstream."""
        for name in _TEXT:
            value = getattr(self, name)
            if value is not None and not visible_ascii(value):
                return False
        return all(visible_ascii(scope) for scope in self.scopes)

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
    derived from `FIELDS`: a new field is one line there, and a keyword parameter and
    its attribute in `Principal`."""

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

_NAMES: Final = tuple(f.name for f in FIELDS)
# Every field's value, in `FIELDS`' order, read in C (equality, hash, copies).
_values: Final = operator.attrgetter(*_NAMES)

_TEXT: Final = tuple(f.name for f in FIELDS if f.kind == "text")


def visible_ascii(text: str) -> bool:
    """`[!-~]+`: visible ASCII, no space, not empty. By string methods: a regular
    expression's match costs ~1k instructions more a value, and a fresh token checks
    two to four of them."""
    return text.isascii() and text.isprintable() and " " not in text and text != ""


ANONYMOUS = Principal(type="anonymous")


def agrees(cls: type, fields: tuple[Field, ...]) -> bool:
    """Whether `cls`'s attributes are exactly `fields`' names, each taken by keyword only
    and stored under its name. Compiled, a class lists its attributes in
    `__mypyc_attrs__` (it keeps no `__slots__`)."""
    names = [f.name for f in fields]
    attributes: tuple[str, ...] = getattr(cls, "__mypyc_attrs__", ()) or getattr(
        cls, "__slots__", ()
    )
    if set(attributes) != set(names):
        return False
    try:
        plain = cls(type="anonymous")  # every other field has its default
        again = cls(**{name: getattr(plain, name) for name in names})
    except (TypeError, AttributeError):
        return False
    try:
        cls(*[getattr(again, name) for name in names])
    except TypeError:
        return True
    return False


if not agrees(Principal, FIELDS):
    raise ImportError("proxy.core.principal: FIELDS and Principal's attributes disagree")


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
