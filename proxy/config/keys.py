"""How each key is written: its `Kind` (how YAML is read into it, and what the chart's
schema admits for it) and its `Key` (the field's metadata in `model`: YAML name, nested
section, default where the model has none). The model states every key once; `reader`
reads YAML by it and `schema` writes the chart's JSON schema from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Final

from proxy.config.values import (
    DURATION_RE,
    FALSE_WORDS,
    SIZE_RE,
    TRUE_WORDS,
    absolute_path,
    bool_value,
    float_value,
    http_url,
    int_value,
    issuer_url,
    parse_duration,
    parse_size,
    str_list,
    str_value,
)

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
    either = ("".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in w) for w in words)
    return "^(" + "|".join(either) + ")$"


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
    {"type": "string", "pattern": _words(*TRUE_WORDS, *FALSE_WORDS)},
    empty=False,
)
NON_NEGATIVE_INT: Final = _integer("must not be negative, got {v}", 0)
POSITIVE_INT: Final = _integer("must be at least 1, got {v}", 1)
PORT: Final = _integer("port out of range 0-65535: {v}", 0, 65535)
IPV4_PREFIX: Final = _integer("must be a prefix length from 1 to 32, got {v}", 1, 32)
IPV6_PREFIX: Final = _integer("must be a prefix length from 1 to 128, got {v}", 1, 128)
_POSITIVE: Final = "must be greater than 0"
POSITIVE_NUMBER: Final = _bounded(float_value, "number", _NUMBER_TEXT, _POSITIVE, 0, open_low=True)
_SHARE: Final = "must be at least 0 and less than 1, got {v}"
FRACTION: Final = _bounded(float_value, "number", _NUMBER_TEXT, _SHARE, 0, 1, open_high=True)
_SECONDS: Final = {"type": "string", "pattern": DURATION_RE.pattern}
DURATION: Final = Kind.of(parse_duration, {"type": "number", "minimum": 0}, _SECONDS, empty=0.0)
POSITIVE_DURATION: Final = _bounded(parse_duration, "number", _SECONDS, _POSITIVE, 0, open_low=True)
_BYTES: Final = {"type": "string", "pattern": SIZE_RE.pattern}
SIZE: Final = Kind.of(parse_size, {"type": "integer", "minimum": 0}, _BYTES, empty=0)
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
# A field without a `Key` is of its default's kind: a bool, a count, seconds, text, a list.
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


def of(kind: Kind, default: object, **spec: Any) -> Any:
    """A key of `kind` with its default: `timeout: float = of(POSITIVE_DURATION, 1.0)`
    (a dataclass field whose metadata holds its `Key`). Typed Any, not the default's
    type: compiled, a call typed `float` is checked to return one, and this is a Field."""
    return field(default=default, metadata=key(kind=kind, **spec))


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


def section_of(spec: Key, default: Any) -> type | None:
    """The dataclass a nested section is read as: the `Key`'s, or its default's type."""
    if spec.section is None and dataclasses.is_dataclass(default):
        return type(default)
    return spec.section


def is_secret(f: dataclasses.Field[Any]) -> bool:
    """A secret (`repr=False`): written as `name` (`${VAR}`) or `name_file`."""
    return not f.repr


def keys(cls: type, skip: tuple[str, ...] = ()) -> set[str]:
    """The keys a section read as `cls` may hold."""
    out: set[str] = set()
    for f, s, name in yaml_fields(cls, skip):
        if not s.under:
            out |= {name, f"{name}_file"} if is_secret(f) else {name}
    return out
