"""The packed entry table: the same answers as a dict, in under 100 bytes an entry."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.auth.cache.entries import (
    RECENT,
    RECORD_SIZE,
    Entry,
    Negative,
    PackedTable,
    Positive,
)
from proxy.core.principal import Principal


def key(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()[:16]


def positive(i: int, token_id: str | None = None, expires_at: float | None = 2e9) -> Positive:
    principal = Principal(
        type="machine",
        id=f"mch_{i % 7}",
        token_type="m2m_token",
        token_id=token_id if token_id is not None else f"mt_{i:032x}",
        scopes=frozenset({f"mch_{i % 3}", "mch_x"}),
        claims_json='{"tier":"gold"}' if i % 2 else None,
        expires_at=expires_at,
    )
    return Positive(principal=principal, fresh_until=1000.0 + i, keep_until=1000.5 + i)


def negative(i: int) -> Negative:
    return Negative(code="token_invalid", message="token is not valid", token_type="m2m_token" if i % 2 else None, keep_until=99.0 + i)


def test_every_kind_of_entry_comes_back_equal() -> None:
    table = PackedTable()
    entries: dict[bytes, Entry] = {
        key(1): positive(1),
        key(2): positive(2, token_id="y" * 80),  # overflow
        key(9): Positive(principal=Principal(type="user", id="u" * 40, token_type="session_token", token_id="sess_" + "Z" * 27), fresh_until=1.0, keep_until=2.0),
        key(3): positive(3, expires_at=None),
        key(4): positive(4, token_id="sess_abc"),
        key(5): negative(5),
        key(6): negative(6),
        key(7): Positive(principal=Principal(type="anonymous"), fresh_until=1.0, keep_until=2.0),
        key(8): Positive(principal=positive(8).principal, fresh_until=5.0, keep_until=math.inf),
    }
    for k, e in entries.items():
        table[k] = e
    assert len(table) == len(entries)
    for k, e in entries.items():
        assert k in table
        assert table.get(k) == e
    assert table.get(key(99)) is None
    assert key(99) not in table
    assert "not a key" not in table


def test_identities_are_shared_not_copied() -> None:
    table = PackedTable()
    for i in range(1000):
        table[key(i)] = positive(i)
    # 7 subjects x 3 scope sets x 2 claims, and the subject decides the rest.
    assert len(table._principals) <= 42
    a, b = table.get(key(0)), table.get(key(42))
    assert isinstance(a, Positive) and isinstance(b, Positive)
    assert a.principal.scopes is b.principal.scopes


def test_overwrite_and_overflow_bookkeeping() -> None:
    table = PackedTable()
    table[key(1)] = positive(1, token_id="z" * 50)
    table[key(1)] = positive(1, token_id="mt_" + "b" * 32)
    assert table._overflow == {}
    table[key(1)] = positive(1, token_id="z" * 50)
    assert table.pop(key(1)) == positive(1, token_id="z" * 50)
    assert table._overflow == {} and len(table) == 0
    with pytest.raises(KeyError):
        del table[key(1)]
    with pytest.raises(ValueError, match="16 bytes"):
        table[b"short"] = positive(1)


def test_recently_read_entries_never_outlive_a_write() -> None:
    table = PackedTable()
    table[key(1)] = positive(1)
    first = table.get(key(1))
    assert table.get(key(1)) is first  # kept built
    table[key(1)] = positive(2)
    assert table.get(key(1)) == positive(2)
    assert table.pop(key(1)) == positive(2)
    assert table.get(key(1)) is None
    table[key(1)] = negative(1)
    table.get(key(1))
    del table[key(1)]
    assert table.get(key(1)) is None and key(1) not in table


def test_the_recent_memo_is_bounded() -> None:
    table = PackedTable()
    for i in range(3 * RECENT):
        table[key(i)] = negative(i)
        assert table.get(key(i)) == negative(i)
    assert 0 < len(table._recent) <= RECENT


def test_bytes_per_entry_at_100k() -> None:
    table = PackedTable()
    n = 100_000
    for i in range(n):
        table[key(i)] = positive(i)
    held = len(table._records) + table._index.itemsize * len(table._index)
    assert len(table._records) == n * RECORD_SIZE
    assert held / n < 100
    for i in range(0, n, 997):
        assert table.get(key(i)) == positive(i)


# Operations on a small key space, so that collisions, overwrites, deletions of probe-run
# members and moves of the last record all happen, checked against a dict after each.
operation = st.tuples(st.sampled_from(["set", "pop", "del", "get"]), st.integers(0, 300))


@settings(max_examples=200, deadline=None)
@given(st.lists(operation, max_size=400))
def test_behaves_like_a_dict(ops: list[tuple[str, int]]) -> None:
    table, model = PackedTable(), dict[bytes, Entry]()
    for step, (op, i) in enumerate(ops):
        k = key(i)
        if op == "set":
            e: Entry = positive(step) if step % 3 else negative(step)
            table[k] = e
            model[k] = e
        elif op == "pop":
            assert table.pop(k, None) == model.pop(k, None)
        elif op == "del":
            if k in model:
                del table[k]
                del model[k]
            else:
                with pytest.raises(KeyError):
                    del table[k]
        else:
            assert table.get(k) == model.get(k)
        assert len(table) == len(model)
    for k, e in model.items():
        assert table.get(k) == e
    assert len(table._records) == len(model) * RECORD_SIZE


def test_tiny_index_with_every_bucket_colliding() -> None:
    # Keys sharing their low bits land on one bucket: the worst case for the probe run.
    table = PackedTable()
    keys = [i.to_bytes(1, "little") * 16 for i in range(0, 256, 8)][:3]
    for n, k in enumerate(keys):
        table[k] = negative(n)
    del table[keys[0]]
    assert [table.get(k) for k in keys] == [None, negative(1), negative(2)]


def test_matching_finds_every_revoked_id_and_subject_in_one_pass() -> None:
    """Revocations arrive in batches (issue 26 row 4): one pass finds the entries of all
    the ids and subjects of a batch, packed or not, and nothing else."""
    table = PackedTable()
    odd = "tok.not-a-clerk-form"  # a token id no form packs
    for i in range(200):
        table[key(i)] = positive(i, token_id=odd if i == 150 else None)
    table[key(1000)] = negative(1000)
    want_ids = {f"mt_{3:032x}", f"mt_{77:032x}", odd, "mt_nowhere"}
    found = table.matching(want_ids, {"mch_5"})
    keys = {k for k, _ in found}
    expected = {key(3), key(77), key(150)} | {key(i) for i in range(200) if i % 7 == 5}
    assert keys == expected
    for k, entry in found:
        assert entry == table.get(k)
    assert table.matching((), ()) == []
    assert table.matching(set(), {"mch_nobody"}) == []
