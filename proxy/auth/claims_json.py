"""Claims as an issuer sends them: JSON text (RFC 8259) and NumericDate (RFC 7519 §2).

Python's `json` reads `NaN`, `Infinity` and `-Infinity`, which are not JSON (RFC 8259
§6): a token or an answer carrying one is refused whole, so `exp: NaN` cannot make a
token that never expires (every comparison with NaN is false). A NumericDate must be a
number from 0 to the last second of year 9999: `exp: 1e400` (infinity once read) or a
400-digit integer (which overflows a float) is not a date, and must not reach arithmetic
on the request path. Pure.
"""

from __future__ import annotations

import json
from json.scanner import make_scanner
from typing import Any, Final

# 9999-12-31T23:59:59Z: the last second a calendar date (and Python's datetime) can name.
MAX_NUMERIC_DATE: Final = 253_402_300_799


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# The decoders' scanners, called directly: `json.loads` reaches the same C scanner through
# two Python-level methods and two regular-expression matches for the whitespace around
# the value, as much CPU as scanning a JWT's header (a fresh JWT reads two segments).
# (A decoder is the context `json` itself gives a scanner; the stub asks for a scanner.)
_STRICT: Final = make_scanner(json.JSONDecoder(parse_constant=_not_json))  # type: ignore[arg-type]
_LENIENT: Final = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_SPACE: Final = " \t\n\r"  # JSON's whitespace (RFC 8259 §2)


def loads(text: bytes | str, *, strict: bool = True) -> Any:
    """`json.loads`, refusing the constants that are not JSON (`strict` False: as
    `json.loads` reads them). Raises ValueError (and RecursionError for absurd nesting),
    as `json.loads` does."""
    if not isinstance(text, str):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        value, end = (_STRICT if strict else _LENIENT)(text, start)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if text[end:].strip(_SPACE):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def numeric_date(value: Any, per_second: int = 1) -> float | None:
    """Seconds since the epoch from a NumericDate (`per_second` 1000: one in milliseconds),
    None when absent; ValueError for anything else. Compared before it is converted, so a
    huge integer is refused instead of overflowing."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("is not a number")
    if not 0 <= value <= MAX_NUMERIC_DATE * per_second:  # NaN fails too
        raise ValueError("is not a date (a number of seconds from 1970 to 9999)")
    return value / per_second if per_second != 1 else float(value)


def strings(value: Any) -> tuple[str, ...]:
    """A claim that is one string or an array of them (`aud`, RFC 7519 §4.1.3); other
    members of the array are not strings and are left out."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()
