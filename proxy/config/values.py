"""Typed values inside a config file, and the walker that reports every problem.

Durations, sizes, URLs, path globs and secrets: each parser raises
ValueError/TypeError with a message meant for a human, and `Reader` turns those into
`ConfigIssue`s naming the file and key path instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
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
# Case-insensitive by hand: the chart's schema reuses the pattern (ECMA regexes, no flags).
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT][iI]?[bB]?|[bB])?\s*$")
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


# --- kinds: how a key is read, and what the chart's schema admits for it -------------------

_INTEGER_TEXT: Final = {"type": "string", "pattern": r"^\s*-?\d+\s*$"}
_NUMBER_TEXT: Final = {"type": "string", "pattern": r"^\s*-?\d+(\.\d+)?\s*$"}

# A `${VAR}` the proxy substitutes before it parses the YAML: in Helm values, any scalar.
_VARIABLE: Final = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"}
_NULL: Final = {"type": "null"}  # an absent key, as the proxy reads `key:` with no value


@dataclass(frozen=True, slots=True)
class Kind:
    parse: Callable[[Any], Any]
    # Admits what `parse` accepts (a little more where a pattern cannot say it).
    schema: Mapping[str, Any]
    empty: Any = ""  # the value of a required key that is missing

    @staticmethod
    def of(parse: Callable[[Any], Any], *shapes: Mapping[str, Any], empty: Any = "") -> Kind:
        return Kind(parse, {"anyOf": [*shapes, _VARIABLE, _NULL]}, empty)


def _words(*words: str) -> str:
    """A regex for `words` in any case (ECMA patterns have no flags)."""
    return "^(" + "|".join("".join(f"[{c.lower()}{c.upper()}]" for c in w) for w in words) + ")$"


def _bounded(
    read: Callable[[Any], Any],
    shape: str,
    text: Mapping[str, Any],
    why: str,
    low: float,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> Kind:
    """`read`, then `low` ≤ x ≤ `high` (or < where open); `why` ({v}: the value) when not.
    The schema's bounds are the same numbers."""

    def parse(v: Any) -> Any:
        x = read(v)
        if x < low or (open_low and x == low):
            raise ValueError(why.format(v=x))
        if high is not None and (x > high or (open_high and x == high)):
            raise ValueError(why.format(v=x))
        return x

    bounds = {"exclusiveMinimum" if open_low else "minimum": low}
    if high is not None:
        bounds["exclusiveMaximum" if open_high else "maximum"] = high
    return Kind.of(parse, {"type": shape, **bounds}, text, empty=0 if shape == "integer" else 0.0)


def _integer(why: str, low: int, high: int | None = None) -> Kind:
    return _bounded(int_value, "integer", _INTEGER_TEXT, why, low, high)


def one_of(*choices: str, what: str = "", upper: bool = False) -> Kind:
    """A string from `choices` (in any case when `upper`: read upper-cased)."""
    said = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]

    def parse(v: Any) -> str:
        s = str_value(v).upper() if upper else str_value(v)
        if s not in choices:
            raise ValueError(f"{f'unknown {what}: ' if what else ''}must be {said}, got {s!r}")
        return s

    admitted = [*choices, *(c.lower() for c in choices)] if upper else list(choices)
    return Kind(parse, {"enum": [*dict.fromkeys(admitted), None]}, choices[0])


STRING: Final = Kind(str_value, {"type": ["string", "number", "null"]})
BOOL: Final = Kind.of(
    bool_value,
    {"type": "boolean"},
    {"type": "string", "pattern": _words("true", "false", "yes", "no", "1", "0", "on", "off")},
    empty=False,
)
NON_NEGATIVE_INT: Final = _integer("must not be negative, got {v}", 0)
POSITIVE_INT: Final = _integer("must be at least 1, got {v}", 1)
PORT: Final = _integer("port out of range 0-65535: {v}", 0, 65535)
IPV4_PREFIX: Final = _integer("must be a prefix length from 1 to 32, got {v}", 1, 32)
IPV6_PREFIX: Final = _integer("must be a prefix length from 1 to 128, got {v}", 1, 128)
POSITIVE_NUMBER: Final = _bounded(
    float_value, "number", _NUMBER_TEXT, "must be greater than 0", 0, open_low=True
)
FRACTION: Final = _bounded(
    float_value,
    "number",
    _NUMBER_TEXT,
    "must be at least 0 and less than 1, got {v}",
    0,
    1,
    open_high=True,
)
_DURATION_TEXT: Final = {"type": "string", "pattern": _DURATION.pattern}
DURATION: Final = Kind.of(
    parse_duration, {"type": "number", "minimum": 0}, _DURATION_TEXT, empty=0.0
)
POSITIVE_DURATION: Final = _bounded(
    parse_duration, "number", _DURATION_TEXT, "must be greater than 0", 0, open_low=True
)
SIZE: Final = Kind.of(
    parse_size,
    {"type": "integer", "minimum": 0},
    {"type": "string", "pattern": _SIZE.pattern},
    empty=0,
)
_URL: Final = {"type": "string", "pattern": "^https?://"}
HTTP_URL: Final = Kind.of(http_url, _URL)
ISSUER_URL: Final = Kind.of(issuer_url, _URL)
EXACT_URL: Final = Kind.of(lambda v: issuer_url(v, strip=False), _URL)  # an `iss`, as written
OPTIONAL_HTTP_URL: Final = Kind.of(
    lambda v: http_url(v) if str_value(v) else "", _URL, {"const": ""}
)
REDIS_URL: Final = Kind.of(
    str_value, {"type": "string", "pattern": r"^rediss?(\+sentinel|\+cluster)?://"}
)
ABSOLUTE_PATH: Final = Kind.of(absolute_path, {"type": "string", "pattern": "^/"})
STR_LIST: Final = Kind(
    str_list,
    {"type": ["string", "array", "null"], "items": {"type": ["string", "number"]}},
    (),
)
# A set of names; none (or an empty list) reads as None, "not restricted".
STR_SET: Final = Kind(lambda v: frozenset(str_list(v)) or None, STR_LIST.schema, None)
_BY_DEFAULT: Final = (
    (bool, BOOL),
    (int, NON_NEGATIVE_INT),
    (float, DURATION),
    (str, STRING),
    (tuple, STR_LIST),
)


@dataclass(frozen=True, slots=True)
class Key:
    """How a model field is written in YAML (its `field(metadata=key(...))`). A field
    without one is a key of the kind its default's type says: a float is seconds."""

    kind: Kind | None = None
    name: str = ""  # in YAML, when not the field's name (`global_`)
    # In YAML, for a field the model requires (a factory: a plain MISSING means none).
    default: Any = field(default_factory=lambda: MISSING)
    section: type | None = None  # a nested mapping read as this dataclass
    many: str = ""  # "list": a list of `section`s; "names": a list of names or name → section
    under: str = ""  # written inside this sibling section (per_ip's prefix lengths)
    skip: tuple[str, ...] = ()  # the fields of `section` that are not keys here
    kinds: Mapping[str, Kind] = field(default_factory=dict)  # for a section without Keys
    # "present": None when absent; "enabled": None unless its `enabled` key is true.
    when: str = ""
    schema: Mapping[str, Any] | None = None  # a shape of its own
    yaml: bool = True  # False: not in the file (where the config was read from)


def key(**spec: Any) -> dict[str, Key]:
    """`field(metadata=key(...))`: how the field is written (see `Key`)."""
    return {"key": Key(**spec)}


def spec_of(f: dataclasses.Field[Any]) -> Key:
    found = f.metadata.get("key")
    return found if isinstance(found, Key) else Key()


def yaml_fields(
    cls: type, skip: tuple[str, ...] = ()
) -> list[tuple[dataclasses.Field[Any], Key, str]]:
    """`cls`'s fields that are keys in YAML, with their `Key` and YAML name."""
    return [
        (f, s, s.name or f.name)
        for f in dataclasses.fields(cls)
        if f.init and f.name not in skip and (s := spec_of(f)).yaml
    ]


def default_of(f: dataclasses.Field[Any], spec: Key, base: object | None) -> Any:
    """What an absent key reads as: `base`'s value, the `Key`'s, the model's; MISSING:
    required."""
    if base is not None:
        return getattr(base, f.name)
    if spec.default is not MISSING:
        return spec.default
    return f.default


def kind_of(f: dataclasses.Field[Any], spec: Key, default: Any, kinds: Mapping[str, Kind]) -> Kind:
    if spec.kind is not None:
        return spec.kind
    if f.name in kinds:
        return kinds[f.name]
    for typ, kind in _BY_DEFAULT:
        if isinstance(default, typ):
            return kind
    raise TypeError(f"{f.name}: say its kind with field(metadata=key(kind=...))")


def is_secret(f: dataclasses.Field[Any]) -> bool:
    """A secret (`repr=False`): written as `name` (`${VAR}`) or `name_file`."""
    return not f.repr


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

    def read(
        self,
        cls: type[T],
        raw: Any,
        key: str,
        *,
        base: T | None = None,
        skip: tuple[str, ...] = (),
        extra: frozenset[str] = frozenset(),
        kinds: Mapping[str, Kind] | None = None,
        **given: Any,
    ) -> T:
        """A `cls` from its section: every key the model names (`Key`), read by its kind,
        with the model's default (or `base`'s value); `given` supplies what the caller
        read itself. `skip`: fields that are no keys here (they keep `base`'s value)."""
        fields = yaml_fields(cls, skip)
        sec = self.section(raw, key, keys(cls, skip) | extra)
        values: dict[str, Any] = {n: getattr(base, n) for n in skip if base is not None}
        values.update(given)
        for f, s, name in fields:
            if f.name in given:
                continue
            default = default_of(f, s, base)
            where, at = sec, key
            if s.under:
                inner = sec.get(s.under)
                where = inner if isinstance(inner, dict) else {}
                at = f"{key}.{s.under}" if key else s.under
            path = f"{at}.{name}" if at else name
            if s.section is not None:
                children = frozenset(n for _, t, n in fields if t.under == name)
                values[f.name] = self._nested(s, where.get(name), path, default, children)
            elif is_secret(f):
                values[f.name] = self.secret(where, at, name, required=default is MISSING)
            else:
                kind = kind_of(f, s, default, kinds or {})
                if default is MISSING and where.get(name) in (None, ""):
                    self.problem(path, "is required")
                values[f.name] = self.get(
                    where, at, name, kind.parse, kind.empty if default is MISSING else default
                )
        return cls(**values)

    def _nested(self, s: Key, raw: Any, path: str, default: Any, children: frozenset[str]) -> Any:
        assert s.section is not None and not s.many, f"{path}: read it with given"
        if s.when == "present" and raw is None:
            return None
        if s.when == "enabled":
            if not isinstance(raw, dict) or not self.get(raw, path, "enabled", BOOL.parse, False):
                self.section(raw, path, keys(s.section, s.skip) | {"enabled"})
                return None
            raw = {k: v for k, v in raw.items() if k != "enabled"}
        base = None if default is MISSING else default
        return self.read(
            s.section, raw, path, base=base, skip=s.skip, extra=children, kinds=s.kinds
        )

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


def keys(cls: type, skip: tuple[str, ...] = ()) -> set[str]:
    """The keys a section read as `cls` may hold."""
    out: set[str] = set()
    for f, s, name in yaml_fields(cls, skip):
        if not s.under:
            out |= {name, f"{name}_file"} if is_secret(f) else {name}
    return out
