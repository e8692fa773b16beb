"""Revoked token ids and subjects: what this process refuses, and how the cluster learns.

A revocation names the issuer whose token it ends (`clerk`, or an `issuers[].name`): the
same `sub` or `jti` from two issuers is two principals (OIDC: `iss` + `sub`), so revoking
one never locks out the other.

`Revoked` is the local set (no I/O): (issuer, kind, value), each until a time — the
token's expiry when known, else the operator's TTL. A Principal whose token id or
subject is in it is refused, whichever level or issuer produced it; so a revoked token
cannot come back through the shared level or a cache miss, and a first-level hit cannot
serve it because its entry was dropped when the revocation arrived.

In Redis a revocation is a member of one sorted set per Clerk instance (scored by its
end, cluster-safe under one hash tag) and a message on the instance's channel, both the
same signed text (`sign`): `r1 <tag> <until> <issuer> <kind> <value>`, the tag an HMAC
keyed from the entries' MAC key. Whoever can write to Redis without that key can revoke
nothing, and cannot push a real revocation out of a process's set (what does not verify
never reaches it). The set is what a process that missed the message reads back (on
every reconnect, and every `resync_seconds`), and what a process writes its own live
revocations back into when Redis lost them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from proxy.core.principal import Principal

Kind = Literal["token_id", "subject"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)
# The issuer name of Clerk's own tokens (configured issuers may not take it).
CLERK: Final = "clerk"
# Revocations are an operator's act, rare, and only signed ones get here: the bound
# guards memory. A full set takes no more (it never evicts a live one).
MAX_REVOKED: Final = 100_000
MAX_VALUE: Final = 256
# The longest an operator may revoke for; a signed `until` further out than this (plus a
# day of clock skew between pods) is refused as well.
MAX_TTL: Final = 10 * 365 * 86_400.0
_SKEW: Final = 86_400.0
FORMAT: Final = "r1"
_TAG_HEX: Final = 32
_MAX_MEMBER: Final = 512
_ISSUER: Final = re.compile(r"[a-z0-9_-]{1,64}")

# Drop ended members, add this one, publish; the answer is how many processes heard it.
REVOKE: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return redis.call('PUBLISH', ARGV[4], ARGV[5])
"""


@dataclass(frozen=True, slots=True)
class Revocation:
    issuer: str
    kind: str
    value: str
    until: float


def valid_value(value: object) -> bool:
    """Token ids and subjects are ids: short, visible ASCII."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_VALUE
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def valid_issuer(name: object) -> bool:
    return isinstance(name, str) and _ISSUER.fullmatch(name) is not None


def issuer_of(principal: Principal) -> str:
    return principal.issuer or CLERK


def signing_key(mac: bytes) -> bytes:
    """The revocations' key, derived from the entries' (`codec.mac_key`): a tag of one kind
    of value is never a valid tag of the other."""
    return hmac.new(mac, b"clerk-auth-proxy revocations v1", hashlib.sha256).digest()


def sign(key: bytes, r: Revocation) -> str:
    """The member and message text of `r`. `repr` of a float reads back to the same float,
    so signing what `verify` returned gives the same text."""
    body = f"{r.until!r} {r.issuer} {r.kind} {r.value}"
    return f"{FORMAT} {_tag(key, body)} {body}"


def verify(key: bytes, raw: object, now: float) -> Revocation | None:
    """The revocation `sign` wrote, still live; None for anything else (unsigned, forged,
    garbled, ended, or with an `until` no operator could have set)."""
    if isinstance(raw, bytes):
        if len(raw) > _MAX_MEMBER or not raw.isascii():
            return None
        raw = raw.decode("ascii")
    if not isinstance(raw, str) or len(raw) > _MAX_MEMBER:
        return None
    parts = raw.split(" ")
    if len(parts) != 6 or parts[0] != FORMAT or len(parts[1]) != _TAG_HEX:
        return None
    _, tag, until_text, issuer, kind, value = parts
    if not hmac.compare_digest(tag, _tag(key, raw[len(FORMAT) + 1 + _TAG_HEX + 1 :])):
        return None
    try:
        until = float(until_text)
    except ValueError:
        return None
    if not live(until, now) or kind not in KINDS:
        return None
    if not valid_issuer(issuer) or not valid_value(value):
        return None
    return Revocation(issuer, kind, value, until)


def live(until: float, now: float) -> bool:
    """Whether `until` is a time a revocation may end at: finite, after now, and no
    further out than the longest TTL."""
    return math.isfinite(until) and now < until <= now + MAX_TTL + _SKEW


def _tag(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode("ascii"), hashlib.sha256).hexdigest()[:_TAG_HEX]


class Revoked:
    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._until: dict[tuple[str, str, str], float] = {}
        # Live revocations not held because the set was full (an operator must know).
        self.turned_away = 0

    def __len__(self) -> int:
        return len(self._until)

    @property
    def full(self) -> bool:
        return len(self._until) >= MAX_REVOKED

    def add(self, r: Revocation) -> bool:
        """Record a revocation; True when it is new here (or now lasts longer). False too
        when the set is full of live revocations: none is ever pushed out."""
        now = self._now()
        if not live(r.until, now):
            return False
        key = (r.issuer, r.kind, r.value)
        known = self._until.get(key)
        if known is not None and known >= r.until:
            return False
        if known is None and len(self._until) >= MAX_REVOKED:
            self._expire(now)
            if len(self._until) >= MAX_REVOKED:
                self.turned_away += 1
                return False
        self._until[key] = r.until
        return True

    def denies(self, principal: Principal) -> bool:
        if not self._until:
            return False
        now = self._now()
        issuer = issuer_of(principal)
        for kind, value in (("token_id", principal.token_id), ("subject", principal.id)):
            if value is None:
                continue
            key = (issuer, kind, value)
            until = self._until.get(key)
            if until is not None:
                if now < until:
                    return True
                del self._until[key]
        return False

    def items(self) -> Iterator[Revocation]:
        now = self._now()
        for (issuer, kind, value), until in list(self._until.items()):
            if until > now:
                yield Revocation(issuer, kind, value, until)

    def _expire(self, now: float) -> None:
        for key in [k for k, until in self._until.items() if until <= now]:
            del self._until[key]


def set_key(namespace: str) -> str:
    return f"{namespace}:{{revoked}}"


# Members read per round trip: a set an attacker filled is read (and cleaned) a page at
# a time, so each resync makes progress even when it runs out of time.
PAGE: Final = 1000


async def read_page(client: Any, key: str, now: float, start: int) -> list[bytes]:
    """Up to `PAGE` members of the set whose score says they are live, from `start`, as
    stored (unverified)."""
    page = await client.zrangebyscore(key, now, "+inf", start=start, num=PAGE)
    if not isinstance(page, list):
        raise TypeError("ZRANGEBYSCORE answered something other than an array")
    return [m for m in page if isinstance(m, bytes)]
