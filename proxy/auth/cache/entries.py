"""Cache entries, and `PackedTable`: a map of them packed into flat fixed-size records.

Why not a dict of entry objects: a dict slot, a key object, an entry object, a
Principal, a token-id string and a float cost about 390 bytes per verified token, so
100k of them were 38 MB. Here an entry is one 89-byte record in a bytearray plus a
4-byte bucket of an index kept at most half full: about 100 bytes.

How a record holds an entry:
- bytes 0-15 are the key itself (a truncated SHA-256: uniformly spread, so its first
  seven bytes are the hash that picks a bucket).
- What many entries share — a Principal's type, token type, scopes and claims, or a
  rejection's code, message and token type — is interned per table as an "identity"
  and the record holds its number. Partners hold many tokens of few machines.
- What is the token's own — its deadlines, its expiry, its token id and its subject —
  is in the record, the ids packed by `ids` (22 bytes each). A token id no form packs
  is kept beside the table in a dict, a subject in the identity (both costly, and
  neither a form Clerk issues).

Reading an entry back builds it anew (about 2 µs: the record, its ids, a Principal), so
the last `RECENT` entries read are also kept built, in a small dict emptied when full:
the tokens in use are answered at a dict's speed, the cold ones at the table's.

Records are dense: removing one moves the last record into its place, so the bytearray
never has holes, and the index is linear-probing with backward-shift deletion, so it
never has tombstones. The interned identities of a table go when the table goes
(`Generations` drops a whole table at a time).
"""

from __future__ import annotations

import math
import operator
import struct
from array import array
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, final

from proxy.auth.cache import ids
from proxy.core.errors import ProxyError
from proxy.core.principal import FIELDS, Principal


@final
class Positive:
    """A verified token's entry: what a frozen dataclass would be (keyword-only, read-only,
    equal by its fields), built in a tenth of the time compiled: one is built per miss."""

    __slots__ = ("fresh_until", "keep_until", "principal")

    def __init__(self, *, principal: Principal, fresh_until: float, keep_until: float) -> None:
        self.principal: Final = principal
        self.fresh_until: Final = fresh_until
        # fresh_until, plus the stale-if-error window capped at expiry
        self.keep_until: Final = keep_until

    def _fields(self) -> tuple[Principal, float, float]:
        return self.principal, self.fresh_until, self.keep_until

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Positive) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Positive(principal={self.principal!r}, fresh_until={self.fresh_until!r}, "
            f"keep_until={self.keep_until!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Negative:
    code: str
    message: str
    token_type: str | None
    keep_until: float

    def error(self) -> ProxyError:
        return ProxyError(self.code, self.message, token_type=self.token_type)


Entry = Positive | Negative

KEY_SIZE: Final = 16

# key, flags, identity, fresh_until, keep_until, expires_at (NaN: none), the token id,
# the subject. Little-endian, unaligned: 89 bytes. Flags: bit 0 set for a rejection,
# bits 1-3 the token id's form, bits 4-6 the subject's (`ids`).
_RECORD: Final = struct.Struct(f"<16sBIddd{ids.AREA}s{ids.AREA}s")
RECORD_SIZE: Final = _RECORD.size

_NEGATIVE: Final = 1
# Where a record's token id and subject areas start (after key, flags, identity, 3 times).
_ID_AT: Final = KEY_SIZE + 1 + 4 + 3 * 8
_SUBJECT_AT: Final = _ID_AT + ids.AREA

RECENT: Final = 512

# What a record holds of a Principal itself (`_RECORD`); every other field of
# `principal.FIELDS` is the identity's, so a new field is shared without an edit here.
_OWN: Final = frozenset({"id", "token_id", "expires_at"})
_SHARED: Final = tuple(f.name for f in FIELDS if f.name not in _OWN)
# Their values as one tuple, read in C (a Python-level `getattr` per field cost a fifth of
# a Clerk entry's packing). A single name would give the value alone, not a tuple.
assert len(_SHARED) > 1
_shared_values: Final = operator.attrgetter(*_SHARED)

# (the subject when no form packs it, else None; then the `_SHARED` fields' values)
_PositiveIdentity = tuple[object, ...]
_NegativeIdentity = tuple[str, str, str | None]


class PackedTable:
    """A dict-like map of 16-byte keys to entries (what `Generations` asks of a table).

    A value read back is equal to the one stored, not necessarily the same object (the
    last `RECENT` read are handed back as built); what entries share (type, token type,
    scopes, claims) is one object per table."""

    __slots__ = (
        "_count",
        "_index",
        "_mask",
        "_overflow",
        "_prefixes",
        "_principal_of",
        "_principals",
        "_recent",
        "_records",
        "_rejection_of",
        "_rejections",
        "_shared",
    )

    def __init__(self) -> None:
        self._records = bytearray()
        self._count = 0
        self._mask = 7
        self._index = _buckets(self._mask + 1)  # record number + 1; 0 is an empty bucket
        self._principals: list[_PositiveIdentity] = []
        self._principal_of: dict[_PositiveIdentity, int] = {}
        # Each identity's `_SHARED` fields by name, as `Principal(**...)` takes them.
        self._shared: list[dict[str, Any]] = []
        self._rejections: list[_NegativeIdentity] = []
        self._rejection_of: dict[_NegativeIdentity, int] = {}
        self._overflow: dict[bytes, str] = {}  # token ids no form packs
        self._prefixes = ids.Prefixes()
        self._recent: dict[bytes, Entry] = {}

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self._find(key)[1] >= 0

    def get(self, key: bytes, default: None = None, /) -> Entry | None:
        recent = self._recent
        entry = recent.get(key)
        if entry is not None:
            return entry
        n = self._find(key)[1]
        if n < 0:
            return None
        entry = self._decode(n)
        if len(recent) >= RECENT:
            recent.clear()
        recent[key] = entry
        return entry

    def pop(self, key: bytes, default: None = None, /) -> Entry | None:
        self._recent.pop(key, None)
        bucket, n = self._find(key)
        if n < 0:
            return None
        entry = self._decode(n)
        self._remove(bucket, n, key)
        return entry

    def __delitem__(self, key: bytes) -> None:
        self._recent.pop(key, None)
        bucket, n = self._find(key)
        if n < 0:
            raise KeyError(key)
        self._remove(bucket, n, key)

    def __setitem__(self, key: bytes, entry: Entry) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"keys are {KEY_SIZE} bytes")
        record = self._encode(key, entry)
        self._recent.pop(key, None)
        bucket, n = self._find(key)
        if n >= 0:
            start = n * RECORD_SIZE
            self._records[start : start + RECORD_SIZE] = record
            return
        self._records += record
        self._index[bucket] = self._count + 1
        self._count += 1
        if 2 * self._count > self._mask + 1:
            self._grow()

    def matching(
        self, token_ids: Collection[str], subjects: Collection[str]
    ) -> list[tuple[bytes, Positive]]:
        """The positive entries whose token id is one of `token_ids` or whose subject is
        one of `subjects` (revocations, however many: one pass). Ids are compared packed,
        as set lookups, so only a match is decoded."""
        id_areas, id_loose = self._packed(token_ids)
        sub_areas, sub_loose = self._packed(subjects)
        found: list[tuple[bytes, Positive]] = []
        if not (id_areas or id_loose or sub_areas or sub_loose):
            return found
        records = self._records
        for n in range(self._count):
            start = n * RECORD_SIZE
            flags = records[start + KEY_SIZE]
            if flags & _NEGATIVE:
                continue
            if not (
                _packed_hit(records, start + _ID_AT, flags >> 1 & 7, id_areas, id_loose)
                or _packed_hit(records, start + _SUBJECT_AT, flags >> 4 & 7, sub_areas, sub_loose)
            ):
                continue
            entry = self._decode(n)
            assert isinstance(entry, Positive)
            p = entry.principal
            if (p.token_id is not None and p.token_id in token_ids) or (
                p.id is not None and p.id in subjects
            ):
                found.append((bytes(records[start : start + KEY_SIZE]), entry))
        return found

    def _packed(self, values: Collection[str]) -> tuple[set[bytes], bool]:
        """`values` as the form byte + area a record holds them in; True when one of them
        packs in no form (then every unpacked record is a candidate)."""
        areas: set[bytes] = set()
        loose = False
        for value in values:
            form, area = ids.pack(value, self._prefixes)
            if form == ids.UNPACKED:
                loose = True
            else:
                areas.add(bytes((form,)) + area.ljust(ids.AREA, b"\0"))
        return areas, loose

    # -- records

    def _encode(self, key: bytes, entry: Entry) -> bytes:
        if isinstance(entry, Negative):
            self._overflow.pop(key, None)
            rejection = (entry.code, entry.message, entry.token_type)
            n = _intern(rejection, self._rejections, self._rejection_of)
            return _RECORD.pack(key, _NEGATIVE, n, 0.0, entry.keep_until, 0.0, b"", b"")
        p = entry.principal
        id_form, id_area = ids.pack(p.token_id, self._prefixes)
        if id_form == ids.UNPACKED:
            self._overflow[key] = p.token_id  # type: ignore[assignment]
        else:
            self._overflow.pop(key, None)
        sub_form, sub_area = ids.pack(p.id, self._prefixes)
        subject = p.id if sub_form == ids.UNPACKED else None
        identity = (subject, *_shared_values(p))
        n = _intern(identity, self._principals, self._principal_of)
        if n == len(self._shared):
            self._shared.append({name: getattr(p, name) for name in _SHARED})
        return _RECORD.pack(
            key,
            id_form << 1 | sub_form << 4,
            n,
            entry.fresh_until,
            entry.keep_until,
            math.nan if p.expires_at is None else p.expires_at,
            id_area,
            sub_area,
        )

    def _decode(self, n: int) -> Entry:
        key, flags, ident, fresh, keep, expires, id_area, sub_area = _RECORD.unpack_from(
            self._records, n * RECORD_SIZE
        )
        if flags & _NEGATIVE:
            code, message, rejected_type = self._rejections[ident]
            return Negative(code=code, message=message, token_type=rejected_type, keep_until=keep)
        id_form, sub_form = flags >> 1 & 7, flags >> 4 & 7
        if id_form == ids.UNPACKED:
            token_id = self._overflow.get(key)
        else:
            token_id = ids.unpack(id_form, id_area, self._prefixes)
        if sub_form == ids.UNPACKED:
            subject = self._principals[ident][0]
        else:
            subject = ids.unpack(sub_form, sub_area, self._prefixes)
        principal = Principal(
            **self._shared[ident],
            id=subject,
            token_id=token_id,
            expires_at=None if math.isnan(expires) else expires,
        )
        return Positive(principal=principal, fresh_until=fresh, keep_until=keep)

    # -- index

    def _home(self, n: int) -> int:
        start = n * RECORD_SIZE
        return int.from_bytes(self._records[start : start + 7], "little") & self._mask

    def _find(self, key: bytes) -> tuple[int, int]:
        """(bucket, record number) of `key`, or (the empty bucket it would take, -1)."""
        records, index, mask = self._records, self._index, self._mask
        bucket = int.from_bytes(key[:7], "little") & mask
        while True:
            slot = index[bucket]
            if slot == 0:
                return bucket, -1
            start = (slot - 1) * RECORD_SIZE
            if records[start : start + KEY_SIZE] == key:
                return bucket, slot - 1
            bucket = (bucket + 1) & mask

    def _remove(self, bucket: int, n: int, key: bytes) -> None:
        index, mask = self._index, self._mask
        # Backward shift: pull later members of the probe run into the hole, so every
        # key stays reachable from its home bucket without tombstones.
        index[bucket] = 0
        hole, probe = bucket, bucket
        while True:
            probe = (probe + 1) & mask
            slot = index[probe]
            if slot == 0:
                break
            home = self._home(slot - 1)
            # Movable when its home is not cyclically within (hole, probe].
            if (probe - home) & mask >= (probe - hole) & mask:
                index[hole] = slot
                index[probe] = 0
                hole = probe
        self._overflow.pop(key, None)
        last = self._count - 1
        if n != last:
            # Keep records dense: the last one moves into the freed place.
            src, dst = last * RECORD_SIZE, n * RECORD_SIZE
            self._records[dst : dst + RECORD_SIZE] = self._records[src : src + RECORD_SIZE]
            moved = self._home(n)
            while index[moved] != last + 1:
                moved = (moved + 1) & mask
            index[moved] = n + 1
        del self._records[last * RECORD_SIZE :]
        self._count = last

    def _grow(self) -> None:
        self._mask = 2 * (self._mask + 1) - 1
        self._index = index = _buckets(self._mask + 1)
        mask = self._mask
        for n in range(self._count):
            bucket = self._home(n)
            while index[bucket] != 0:
                bucket = (bucket + 1) & mask
            index[bucket] = n + 1


def _packed_hit(records: bytearray, at: int, form: int, areas: set[bytes], loose: bool) -> bool:
    if form == ids.UNPACKED:
        return loose
    return bool(areas) and bytes((form,)) + records[at : at + ids.AREA] in areas


Ident = TypeVar("Ident", bound=Hashable)


def _intern(identity: Ident, identities: list[Ident], numbers: dict[Ident, int]) -> int:
    n = numbers.get(identity)
    if n is None:
        n = len(identities)
        identities.append(identity)
        numbers[identity] = n
    return n


def _buckets(size: int) -> array[int]:
    return array("I", bytes(4 * size))
