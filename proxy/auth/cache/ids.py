"""Clerk ids packed into 22 bytes, and back exactly: what keeps a cache entry small.

An id is a prefix and a body: `mt_` and 32 lowercase hex digits (M2M tokens, OAuth
tokens, API keys), `user_`/`sess_`/`mch_` and 27 base-62 characters (Clerk's other
ids). The body packs into 16 or 21 bytes and the prefix into one byte, its number in a
`Prefixes` list (one per table: few distinct prefixes exist). Forms:

- NONE: no id.
- RAW: up to 21 ASCII characters as they are, after a length byte.
- HEX: prefix number, 16 bytes.
- BASE62: prefix number, 21 bytes: six bits a character (27 * 6 <= 168), as base64
  reads them (every base-62 character is one of base64's), with one zero character
  after them to make whole bytes.
- UNPACKED: none of these fits; the caller keeps the id elsewhere.

A form is chosen only when it gives the same string back: `bytes.fromhex` would also
take upper case, and a body of another length or alphabet is not one of these.
"""

from __future__ import annotations

import binascii
import re
from typing import Final

AREA: Final = 22  # bytes an id takes in a record

NONE: Final = 0
RAW: Final = 1
HEX: Final = 2
BASE62: Final = 3
UNPACKED: Final = 4

_HEX_BODY: Final = 32
_BASE62_BODY: Final = 27
_BASE62_BYTES: Final = 21
# base64's character for six zero bits: 27 characters and this one are 21 whole bytes.
_ZERO: Final = "A"
_MAX_PREFIXES: Final = 256
_PREFIX_BYTE: Final = tuple(bytes((n,)) for n in range(_MAX_PREFIXES))

_LOWER_HEX: Final = re.compile(f"[0-9a-f]{{{_HEX_BODY}}}")


class Prefixes:
    """Numbers for the prefixes one table has seen (at most 256: one byte each)."""

    __slots__ = ("_names", "_number")

    def __init__(self) -> None:
        self._names: list[str] = []
        self._number: dict[str, int] = {}

    def number(self, prefix: str) -> int:
        """Its number, or -1 when the list is full."""
        n = self._number.get(prefix)
        if n is None:
            if len(self._names) >= _MAX_PREFIXES:
                return -1
            n = len(self._names)
            self._names.append(prefix)
            self._number[prefix] = n
        return n

    def name(self, number: int) -> str:
        return self._names[number]


def pack(value: str | None, prefixes: Prefixes) -> tuple[int, bytes]:
    """(form, area bytes); the area is empty for NONE and UNPACKED."""
    if value is None:
        return NONE, b""
    if not value.isascii():
        return UNPACKED, b""
    if len(value) >= _HEX_BODY:
        body = value[-_HEX_BODY:]
        digits = _hex(body)
        if digits is not None:
            n = prefixes.number(value[:-_HEX_BODY])
            if n >= 0:
                return HEX, _PREFIX_BYTE[n] + digits
    if len(value) >= _BASE62_BODY:
        body = value[-_BASE62_BODY:]
        # (ASCII, checked above: `isalnum` is then [0-9A-Za-z], base 62's alphabet.)
        if body.isalnum():
            n = prefixes.number(value[:-_BASE62_BODY])
            if n >= 0:
                return BASE62, _PREFIX_BYTE[n] + binascii.a2b_base64(body + _ZERO)
    if len(value) < AREA:
        return RAW, bytes((len(value),)) + value.encode()
    return UNPACKED, b""


def unpack(form: int, area: bytes, prefixes: Prefixes) -> str | None:
    """The id `pack` was given; None for NONE and UNPACKED."""
    if form == RAW:
        return area[1 : 1 + area[0]].decode()
    if form == HEX:
        return prefixes.name(area[0]) + area[1 : 1 + _HEX_BODY // 2].hex()
    if form == BASE62:
        body = binascii.b2a_base64(area[1 : 1 + _BASE62_BYTES], newline=False)
        return prefixes.name(area[0]) + body[:_BASE62_BODY].decode()
    return None


def _hex(body: str) -> bytes | None:
    # Told by a pattern, not by `fromhex` failing: most bodies are not hex (`user_`, `sess_`
    # ids are base 62), and a raised exception costs more than the packing. `isalnum`
    # first: it turns those away at their `_` for less than the pattern's call.
    return bytes.fromhex(body) if body.isalnum() and _LOWER_HEX.fullmatch(body) else None
