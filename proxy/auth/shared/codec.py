"""Cache entries as the shared level stores them, and back — or None for anything else.

A value is `b"1"` (the format), 16 bytes of HMAC-SHA256 and a JSON payload. The MAC is
keyed from the Clerk instance's secret key and covers the Redis key too, so whoever can
write to Redis but does not hold that key can neither mint an entry nor move a real one
to another token's key: such a value, a truncated or garbled one, or one of another
format decodes to None and the token is verified again. The payload is the Principal's
fields and the entry's deadlines; a token is never part of it (the key is the cache's
SHA-256 of the token).

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
from proxy.core.principal import Principal, PrincipalType, TokenType

FORMAT: Final = b"1"
TAG_SIZE: Final = 16
MAX_VALUE: Final = 64 * 1024
_MAX_MESSAGE: Final = 512
PRINCIPAL_TYPES: Final = frozenset(get_args(PrincipalType)) - {"anonymous"}
TOKEN_TYPES: Final = frozenset(get_args(TokenType))


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
        payload = {
            "p": [
                p.type,
                p.id,
                p.token_type,
                p.token_id,
                sorted(p.scopes),
                p.claims_json,
                p.expires_at,
                p.client_id,
                p.issuer,
            ],
            "f": entry.fresh_until,
            "k": entry.keep_until,
        }
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
        return Negative(code, message, token_type, keep)
    fresh = _time(payload["f"])
    # client_id (issue 16) and issuer (issue 21) came later: an entry without them is a
    # Clerk principal without an OAuth client, all that its writer could produce.
    fields = payload["p"]
    if len(fields) in (7, 8):
        fields = [*fields, *([None] * (9 - len(fields)))]
    ptype, subject, token_type, token_id, scopes, claims_json, expires_at, client_id, issuer = (
        fields
    )
    if ptype not in PRINCIPAL_TYPES or fresh > keep:
        return None
    if token_type is not None and token_type not in TOKEN_TYPES:
        return None
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        return None
    for value in (subject, token_id, claims_json, client_id, issuer):
        if value is not None and not isinstance(value, str):
            return None
    if claims_json is not None:
        claims = json.loads(claims_json)
        if not isinstance(claims, dict) or not claims_json.isascii():
            return None
    principal = Principal(
        ptype,
        subject,
        token_type,
        token_id,
        frozenset(scopes),
        claims_json,
        None if expires_at is None else _time(expires_at),
        client_id,
        issuer,
    )
    if not principal.header_safe():
        return None
    return Positive(principal, fresh, keep)


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("not a time")
    return float(value)
