"""Revoked token ids and subjects: what this process refuses, and how the cluster learns.

`Revoked` is the local set (no I/O): token ids and subjects, each until a time — the
token's expiry when known, else the operator's TTL. A Principal whose token id or
subject is in it is refused, whichever level or Clerk produced it; so a revoked token
cannot come back through the shared level or a cache miss, and a first-level hit cannot
serve it because its entry was dropped when the revocation arrived.

In Redis a revocation is a member of one sorted set per Clerk instance
(`token_id:<id>` / `subject:<sub>`, scored by its end, cluster-safe under one hash tag)
and a message on the instance's channel. The set is what a process that missed the
message reads back (on every reconnect, and every `resync_seconds`), so a revoked id
stays refused cluster-wide until its end even where the message never arrived.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal

from proxy.core.principal import Principal

Kind = Literal["token_id", "subject"]
KINDS: Final = ("token_id", "subject")
# Revocations are an operator's act, rare; the bound only guards memory against misuse.
MAX_REVOKED: Final = 100_000
MAX_VALUE: Final = 256

# Drop ended members, add this one keeping the later end (GT adds new members too),
# publish; the answer is how many processes heard it.
REVOKE: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
return redis.call('PUBLISH', ARGV[4], ARGV[5])
"""


def valid_value(value: object) -> bool:
    """Token ids and subjects are Clerk ids: short, visible ASCII."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_VALUE
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def member(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def parse_member(text: str) -> tuple[Kind, str] | None:
    kind, _, value = text.partition(":")
    if kind in KINDS and valid_value(value):
        return kind, value  # type: ignore[return-value]
    return None


class Revoked:
    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._until: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def add(self, kind: str, value: str, until: float) -> bool:
        """Record a revocation; True when it is new here (or now lasts longer)."""
        now = self._now()
        if until <= now:
            return False
        key = (kind, value)
        known = self._until.get(key)
        if known is not None and known >= until:
            return False
        if known is None and len(self._until) >= MAX_REVOKED:
            self._expire(now)
            if len(self._until) >= MAX_REVOKED:
                # Full of live revocations: the oldest-ending goes (it is also in Redis).
                del self._until[min(self._until, key=self._until.__getitem__)]
        self._until[key] = until
        return True

    def denies(self, principal: Principal) -> bool:
        if not self._until:
            return False
        now = self._now()
        for key in (("token_id", principal.token_id), ("subject", principal.id)):
            if key[1] is None:
                continue
            until = self._until.get(key)  # type: ignore[arg-type]
            if until is not None:
                if now < until:
                    return True
                del self._until[key]  # type: ignore[arg-type]
        return False

    def items(self) -> Iterator[tuple[str, str, float]]:
        for (kind, value), until in list(self._until.items()):
            yield kind, value, until

    def _expire(self, now: float) -> None:
        for key in [k for k, until in self._until.items() if until <= now]:
            del self._until[key]


def set_key(namespace: str) -> str:
    return f"{namespace}:{{revoked}}"


async def read_all(client: Any, key: str, now: float) -> list[tuple[str, str, float]]:
    """Every live revocation in Redis: (kind, value, until)."""
    rows = await client.zrangebyscore(key, now, "+inf", withscores=True)
    found: list[tuple[str, str, float]] = []
    for raw, until in rows:
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        parsed = parse_member(text)
        if parsed is not None:
            found.append((parsed[0], parsed[1], float(until)))
    return found
