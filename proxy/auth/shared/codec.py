"""Cache entries as the shared level stores them, and back — or None for anything else.

A value is `FORMAT` (one byte), 16 bytes of HMAC-SHA256 and a JSON payload. The MAC is
keyed from the Clerk instance's secret key and covers the Redis key too, so whoever can
write to Redis but does not hold that key can neither mint an entry nor move a real one
to another token's key: such a value, a truncated or garbled one, or one of another
format decodes to None and the token is verified again. The payload is the entry's
deadlines and the Principal's fields by name, as `principal.FIELDS` declares them, with
`SCHEMA`, a digest of that table: an entry written under another table (a field added,
removed or retyped, by an older or newer release) is of another schema and decodes to
None too — a miss, never a Principal with a field missing or misread. A token is never
part of it (the key is the cache's SHA-256 of the token).

No I/O: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import Any, Final, get_args

from proxy.auth.cache.entries import Entry, Negative, Positive
from proxy.core.errors import STATUS
from proxy.core.principal import FIELDS, Kind, Principal, PrincipalType, TokenType

# `1` held the Principal as a list by position (7, 8 or 9 long); `2` by name.
FORMAT: Final = b"2"
SCHEMA: Final = hashlib.sha256(",".join(f"{f.name}:{f.kind}" for f in FIELDS).encode()).hexdigest()[
    :8
]
TAG_SIZE: Final = 16
MAX_VALUE: Final = 64 * 1024
_MAX_MESSAGE: Final = 512
PRINCIPAL_TYPES: Final = frozenset(get_args(PrincipalType)) - {"anonymous"}
TOKEN_TYPES: Final = frozenset(get_args(TokenType))
_NAMES: Final = frozenset(f.name for f in FIELDS)


def mac_key(secret_key: str, scope: bytes) -> bytes:
    """The MAC key of one Clerk instance: derived, so the secret key itself is never used
    as a MAC key (nor could be recovered from one)."""
    return hmac.new(
        secret_key.encode(), b"clerk-auth-proxy shared cache v1\x00" + scope, hashlib.sha256
    ).digest()


def encode(key: bytes, entry: Entry, mac: bytes) -> bytes:
    payload: dict[str, Any]
    if isinstance(entry, Negative):
        payload = {"n": [entry.code, entry.message, entry.token_type], "k": entry.keep_until}
    else:
        p = entry.principal
        fields = {f.name: _json_value(f.kind, getattr(p, f.name)) for f in FIELDS}
        payload = {"v": SCHEMA, "p": fields, "f": entry.fresh_until, "k": entry.keep_until}
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode()
    return FORMAT + _tag(mac, key, body) + body


def decode(key: bytes, value: object, mac: bytes) -> Entry | None:
    """The entry `encode` was given for `key`, or None when `value` is anything else."""
    if not isinstance(value, bytes) or len(value) > MAX_VALUE:
        return None
    if value[:1] != FORMAT or len(value) < 1 + TAG_SIZE:
        return None
    tag, body = value[1 : 1 + TAG_SIZE], value[1 + TAG_SIZE :]
    if not hmac.compare_digest(tag, _tag(mac, key, body)):
        return None
    try:
        payload = json.loads(body)
        return _entry(payload)
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return None


def _tag(mac: bytes, key: bytes, body: bytes) -> bytes:
    return hmac.new(mac, key + b"\x00" + body, hashlib.sha256).digest()[:TAG_SIZE]


def _entry(payload: Any) -> Entry | None:
    if not isinstance(payload, dict):
        return None
    keep = _time(payload["k"])
    if "n" in payload:
        code, message, token_type = payload["n"]
        if STATUS.get(code) != 401 or not isinstance(message, str):
            return None
        if len(message) > _MAX_MESSAGE or not message.isascii():
            return None
        if token_type is not None and token_type not in TOKEN_TYPES:
            return None
        return Negative(code=code, message=message, token_type=token_type, keep_until=keep)
    fresh = _time(payload["f"])
    fields = payload["p"]
    if payload["v"] != SCHEMA or not isinstance(fields, dict) or fields.keys() != _NAMES:
        return None
    if fields["type"] not in PRINCIPAL_TYPES or fresh > keep:
        return None
    values: dict[str, Any] = {}
    for f in FIELDS:
        value = _value(f.kind, fields[f.name])
        if value is _REFUSED:
            return None
        values[f.name] = value
    principal = Principal(**values)
    if not principal.header_safe():
        return None
    return Positive(principal=principal, fresh_until=fresh, keep_until=keep)


_REFUSED: Final = object()


def _json_value(kind: Kind, value: Any) -> Any:
    return sorted(value) if kind == "scopes" else value


def _value(kind: Kind, value: Any) -> Any:
    """A field's value as `Principal` holds it, or `_REFUSED` when it is not one."""
    if kind == "scopes":
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            return _REFUSED
        return frozenset(value)
    if value is None:
        return None if kind != "principal_type" else _REFUSED
    if kind == "time":
        return _time(value)
    if not isinstance(value, str):
        return _REFUSED
    if kind == "principal_type":
        return value if value in PRINCIPAL_TYPES else _REFUSED
    if kind == "token_type":
        return value if value in TOKEN_TYPES else _REFUSED
    if kind == "claims":
        claims = json.loads(value)
        return value if isinstance(claims, dict) and value.isascii() else _REFUSED
    return value  # text: `header_safe` judges it


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("not a time")
    return float(value)
