"""What the fast path's two state machines share (`fastpath.frontdoor.FrontDoor`,
`http.upstream.UpstreamConnection`; h11's `_state.py` is the model): a transition table
packed for a cheap check, and the error an unlisted transition raises. Not compiled:
mypyc cannot subclass a builtin exception."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# States a machine may have at most: the width of a packed table's row.
ROW: Final = 16


class IllegalTransition(RuntimeError):
    """A state change its table does not list: a bug in the machine, never the peer's
    doing (a peer's misstep is a state the table has)."""

    def __init__(self, machine: str, names: tuple[str, ...], old: int, new: int) -> None:
        super().__init__(f"{machine}: {names[old]} -> {names[new]} is not a transition")


def packed(table: Mapping[int, frozenset[int]]) -> bytes:
    """`table` (every state 0..n-1 → the states it may go to) as bytes where byte
    `old * ROW + new` is 1 when old → new is allowed: under mypyc the check is an index
    into bytes, with no object made or looked up."""
    if sorted(table) != list(range(len(table))) or len(table) > ROW:
        raise ValueError("a transition table lists states 0..n-1, at most ROW of them")
    return bytes(new in table[old] for old in range(ROW) if old in table for new in range(ROW))
