"""Typed values inside a config file, and the problems they can have.

Durations, sizes, URLs, path globs, numbers: each parser raises ValueError/TypeError
with a message meant for a human, which `reader.Reader` turns into a `ConfigIssue`
naming the file and key path.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    key: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key or '<root>'}: {self.why}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


# --- scalar parsing -------------------------------------------------------------------

DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Case-insensitive by hand: the chart's schema reuses the pattern (ECMA regexes, no flags).
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT][iI]?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {"": 1, "b": 1} | {
    prefix + suffix: (1024 if "i" in suffix else 1000) ** power
    for power, prefix in enumerate("kmgt", 1)
    for suffix in ("", "b", "i", "ib")
}


def parse_duration(value: Any) -> float:
    """`30`, `30s`, `1.5m`, `250ms`, `2h` → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 250ms or 2m, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        m = DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 30s, 250ms or 2m, got {value!r}")


def parse_size(value: Any) -> int:
    """`1048576`, `512KiB`, `10MB`, `1g` → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 10MB or 512KiB, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
    raise ValueError(f"expected a size like 10MB or 512KiB, got {value!r}")


_GLOB_OK = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/\-{}]*$")


def validate_glob(pattern: str) -> None:
    """Route globs: absolute, `*` within a segment, `**` only as a whole segment."""
    if not pattern.startswith("/"):
        raise ValueError(f"path glob must start with '/', got {pattern!r}")
    if not _GLOB_OK.match(pattern.replace("*", "")):
        raise ValueError(f"path glob {pattern!r} has characters that cannot appear in a path")
    for segment in pattern.split("/"):
        if "**" in segment and segment != "**":
            raise ValueError(f"'**' must be a whole path segment in {pattern!r}")
        if "***" in segment:
            raise ValueError(f"'***' is not a valid glob in {pattern!r}")


def str_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return str(v)


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def bool_value(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in TRUE_WORDS + FALSE_WORDS:
        return v.lower() in TRUE_WORDS
    raise TypeError(f"expected true or false, got {v!r}")


def int_value(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    raise TypeError(f"expected an integer, got {v!r}")


def float_value(v: Any) -> float:
    if isinstance(v, bool):
        raise TypeError("expected a number, got a boolean")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise TypeError(f"expected a number, got {v!r}")


def http_url(v: Any) -> str:
    s = str_value(v)
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad URL {s!r}: expected http:// or https:// with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"bad URL {s!r}: no query or fragment allowed")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"bad URL {s!r}: {exc}") from None
    return s.rstrip("/")


def str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return tuple(x for x in v.replace(",", " ").split() if x)
    if not isinstance(v, list):
        raise TypeError(f"expected a list of strings, got {type(v).__name__}")
    return tuple(str_value(x) for x in v)


def network(v: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str_value(v), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR network: {v!r}") from None


_LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def issuer_url(value: Any, *, strip: bool = True) -> str:
    """An https URL (http only to a loopback host: tests and the emulator), no query or
    fragment. `strip=False` keeps it byte for byte (an `iss` is compared exactly)."""
    s = str_value(value)
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad URL {s!r}: expected https:// with a host")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"bad URL {s!r}: https is required (http only to a loopback address)")
    if parts.query or parts.fragment:
        raise ValueError(f"bad URL {s!r}: no query or fragment allowed")
    return s.rstrip("/") if strip else s


def absolute_path(v: Any) -> str:
    s = str_value(v)
    if not s.startswith("/"):
        raise ValueError("must start with '/'")
    return s
