"""Typed values inside a config file, and the walker that reports every problem.

Durations, sizes, URLs, path globs and secrets: each parser raises
ValueError/TypeError with a message meant for a human, and `Reader` turns those into
`ConfigIssue`s naming the file and key path instead of stopping at the first.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
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

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
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
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 30s, 250ms or 2m, got {value!r}")


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


def parse_size(value: Any) -> int:
    """`1048576`, `512KiB`, `10MB`, `1g` → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 10MB or 512KiB, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
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


# --- the walker -----------------------------------------------------------------------

T = TypeVar("T")


class Reader:
    """Walks the raw YAML tree, recording every problem instead of stopping at the first."""

    def __init__(
        self,
        file: str,
        env: Mapping[str, str],
        base_dir: Path,
        variables: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.file = file
        self.env = env
        self.base_dir = base_dir
        # key path -> the `${VAR}`s its value reads (sources.py), so messages can name them
        self.variables: Mapping[str, tuple[str, ...]] = variables or {}
        # Secret files read: a change to one is a change of the config (reload).
        self.files: list[str] = []
        self.issues: list[ConfigIssue] = []

    def problem(self, key: str, why: str) -> None:
        self.issues.append(ConfigIssue(self.file, key, why))

    def section(self, raw: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(key, f"expected a mapping, got {type(raw).__name__}")
            return {}
        for k in raw:
            if k not in allowed:
                hint = f" (known keys: {', '.join(sorted(allowed))})"
                self.problem(f"{key}.{k}" if key else str(k), "unknown key" + hint)
        return raw

    def get(
        self, raw: dict[str, Any], key: str, name: str, conv: Callable[[Any], T], default: T
    ) -> T:
        if name not in raw or raw[name] is None:
            return default
        try:
            return conv(raw[name])
        except (ValueError, TypeError) as exc:
            self.problem(f"{key}.{name}" if key else name, str(exc))
            return default

    def required(self, raw: dict[str, Any], key: str, name: str) -> Any:
        if name not in raw or raw[name] in (None, ""):
            self.problem(f"{key}.{name}", "is required")
            return None
        return raw[name]

    def secret(self, raw: dict[str, Any], key: str, name: str, *, required: bool) -> str:
        """`name` (usually `${ENV}`) or `name_file` (a mounted secret), never both. A
        problem names the variable this file reads the secret (or its file) from."""
        path = f"{key}.{name}"
        inline, file_ref = raw.get(name), raw.get(f"{name}_file")
        if inline not in (None, "") and file_ref not in (None, ""):
            self.problem(path, f"set either {name} or {name}_file, not both")
            return ""
        if file_ref not in (None, ""):
            p = Path(str(file_ref))
            if not p.is_absolute():
                p = self.base_dir / p
            self.files.append(str(p))
            try:
                value = p.read_text().strip()
            except OSError as exc:
                why = f"cannot read secret file {str(p)!r}: {exc.strerror}"
                self.problem(f"{path}_file", why + self._file_hint(f"{path}_file"))
                return ""
            if not value:
                why = f"secret file {str(p)!r} is empty"
                self.problem(f"{path}_file", why + self._file_hint(f"{path}_file"))
            return value
        if inline in (None, ""):
            if required:
                names = self.variables.get(path, ())
                how = (
                    f"set {names[0]} (this file reads {name} from it)"
                    if names
                    else f"set it via an environment variable or {name}_file"
                )
                self.problem(path, "missing secret: " + how)
            return ""
        if not isinstance(inline, str):
            self.problem(path, f"expected a string, got {type(inline).__name__}")
            return ""
        return inline

    def _file_hint(self, path: str) -> str:
        names = self.variables.get(path, ())
        if names:
            # The key itself in an environment variable is not read by this file.
            return f"; set {names[0]} to the path of a file that holds it"
        return f"; mount the key there or change {path}"


def str_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return str(v)


def bool_value(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        return v.lower() in ("true", "yes", "1", "on")
    raise TypeError(f"expected true or false, got {v!r}")


def int_value(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    raise TypeError(f"expected an integer, got {v!r}")


def non_negative_int(v: Any) -> int:
    n = int_value(v)
    if n < 0:
        raise ValueError(f"must not be negative, got {n}")
    return n


def positive_int(v: Any) -> int:
    n = int_value(v)
    if n < 1:
        raise ValueError(f"must be at least 1, got {n}")
    return n


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


def fraction(v: Any) -> float:
    """A share, 0 ≤ x < 1."""
    x = float_value(v)
    if not 0 <= x < 1:
        raise ValueError(f"must be at least 0 and less than 1, got {x}")
    return x


def prefix_len(bits: int) -> Callable[[Any], int]:
    """A network prefix length for an address of `bits` bits."""

    def conv(v: Any) -> int:
        n = int_value(v)
        if not 1 <= n <= bits:
            raise ValueError(f"must be a prefix length from 1 to {bits}, got {n}")
        return n

    return conv


def port(v: Any) -> int:
    n = int_value(v)
    if not 0 <= n <= 65535:
        raise ValueError(f"port out of range 0-65535: {n}")
    return n


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
