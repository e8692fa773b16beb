"""Clerk ids packed into 22 bytes, and back exactly: what keeps a cache entry small.

An id is a prefix and a body: `mt_` and 32 lowercase hex digits (M2M tokens, OAuth
tokens, API keys), `user_`/`sess_`/`mch_` and 27 base-62 characters (Clerk's other
ids). The body packs into 16 or 21 bytes and the prefix into one byte, its number in a
`Prefixes` list (one per table: few distinct prefixes exist). Forms:

- NONE: no id.
- RAW: up to 21 ASCII characters as they are, after a length byte.
- HEX: prefix number, 16 bytes.
- BASE62: prefix number, 21 bytes (62**27 < 2**168).
- UNPACKED: none of these fits; the caller keeps the id elsewhere.

A form is chosen only when it gives the same string back: `bytes.fromhex` would also
take upper case, and a body of another length or alphabet is not one of these.
"""

from __future__ import annotations

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
_CHUNK: Final = 9  # a third of a body
_CHUNK_BASE: Final = 62**_CHUNK
_MAX_PREFIXES: Final = 256

_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NOT_A_DIGIT: Final = 255
# Each byte's digit value; `_NOT_A_DIGIT` (-1, not found, modulo 256) outside the alphabet.
_DIGITS: Final = bytes(_ALPHABET.find(chr(b)) % 256 for b in range(256))
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
                return HEX, bytes((n,)) + digits
    if len(value) >= _BASE62_BODY:
        number = _base62(value[-_BASE62_BODY:])
        if number is not None:
            n = prefixes.number(value[:-_BASE62_BODY])
            if n >= 0:
                return BASE62, bytes((n,)) + number.to_bytes(_BASE62_BYTES, "big")
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
        number = int.from_bytes(area[1 : 1 + _BASE62_BYTES], "big")
        chars = []
        for _ in range(_BASE62_BODY):
            number, digit = divmod(number, 62)
            chars.append(_ALPHABET[digit])
        chars.reverse()
        return prefixes.name(area[0]) + "".join(chars)
    return None


def _hex(body: str) -> bytes | None:
    # Told by a pattern, not by `fromhex` failing: most bodies are not hex (`user_`, `sess_`
    # ids are base 62), and a raised exception costs more than the packing.
    return bytes.fromhex(body) if _LOWER_HEX.fullmatch(body) else None


def _base62(body: str) -> int | None:
    # The digits by one table lookup per character (`pack` has checked it is ASCII), then
    # by chunks that stay machine integers (62**9 < 2**54): three big-number steps, not 27.
    digits = body.encode().translate(_DIGITS)
    if _NOT_A_DIGIT in digits:
        return None
    number = 0
    for start in range(0, _BASE62_BODY, _CHUNK):
        chunk = 0
        for digit in digits[start : start + _CHUNK]:
            chunk = chunk * 62 + digit
        number = number * _CHUNK_BASE + chunk
    return number
