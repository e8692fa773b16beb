"""A bounded map of expiring entries kept in two generations of tables.

Why not cachetools' TLRUCache: for every entry it keeps an OrderedDict node, a heap slot
and an item object beside the dict slot — about 220 bytes of bookkeeping, more than the
verified Principal itself — and a lookup runs several Python-level calls. Here an entry
costs one table slot, and a lookup is one or two table probes. A table is a plain dict,
or, for the verification cache, `entries.PackedTable` (under 100 bytes an entry).

How it bounds memory and time:
- New entries go into the young table. When it holds half of `max_entries`, or when it
  has been young for `horizon` seconds, it becomes the old table and the previous old
  table is dropped whole. So at most `max_entries` are held, and an entry outlives its
  last write by at most twice the horizon.
- A time-triggered drop loses nothing live: every entry of the dropped table was written
  at least `horizon` seconds ago, and nothing lives longer than that.
- A size-triggered drop evicts the least recently *used* half, approximately: a read
  that finds its entry in the old table moves it to the young one. Tokens in use survive
  a flood of one-off tokens, as they would in an LRU.
- An entry past its own `keep_until` is never returned, whichever table holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class Expiring(Protocol):
    @property
    def keep_until(self) -> float: ...


K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Expiring)


KC = TypeVar("KC", contravariant=True)


class Table(Protocol[KC, V]):
    """What a generation is kept in: a dict, or `entries.PackedTable`."""

    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __setitem__(self, key: KC, value: V, /) -> None: ...
    def __delitem__(self, key: KC, /) -> None: ...
    def get(self, key: KC, default: None = None, /) -> V | None: ...
    def pop(self, key: KC, default: None, /) -> V | None: ...


class Generations(Generic[K, V]):
    __slots__ = ("_half", "_horizon", "_keep_old", "_new", "_old", "_rotate_at", "_young")

    def __init__(
        self,
        max_entries: int,
        horizon: float,
        now: float,
        table: Callable[[], Table[K, V]] = dict,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if horizon <= 0:
            raise ValueError("horizon must be positive")
        self._new = table
        self._young = table()
        self._old = table()
        self._half = max(1, max_entries // 2)
        # With max_entries == 1 the young table holds the one entry and no old table is kept.
        self._keep_old = max_entries >= 2
        self._horizon = horizon
        self._rotate_at = now + horizon

    def __len__(self) -> int:
        """Entries held, including expired ones not yet dropped."""
        return len(self._young) + len(self._old)

    def get(self, key: K, now: float) -> V | None:
        if now >= self._rotate_at:
            self._rotate(now)
        entry = self._young.get(key)
        if entry is None:
            entry = self._old.pop(key, None)
            if entry is None:
                return None
            if now < entry.keep_until:
                self._put(key, entry, now)
                return entry
            return None
        if now < entry.keep_until:
            return entry
        del self._young[key]
        return None

    def set(self, key: K, entry: V, now: float) -> None:
        if now >= entry.keep_until:
            self.pop(key)
            return
        self._old.pop(key, None)
        self._put(key, entry, now)

    def pop(self, key: K) -> None:
        self._young.pop(key, None)
        self._old.pop(key, None)

    def tables(self) -> tuple[Table[K, V], Table[K, V]]:
        """Both generations, young first (a revocation scans them)."""
        return self._young, self._old

    def _put(self, key: K, entry: V, now: float) -> None:
        young = self._young
        if now >= self._rotate_at or (len(young) >= self._half and key not in young):
            self._rotate(now)
            young = self._young
        young[key] = entry

    def _rotate(self, now: float) -> None:
        if now >= self._rotate_at + self._horizon or not self._keep_old:
            # Idle for a whole horizon since the last rotation: the young table is all
            # expired too.
            self._old = self._new()
        else:
            self._old = self._young
        self._young = self._new()
        self._rotate_at = now + self._horizon
