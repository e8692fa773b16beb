"""The walker: reads a section of the YAML tree as a model dataclass, by its fields' `Key`s,
recording every problem (file, key path, why) instead of stopping at the first."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING
from pathlib import Path
from typing import Any, TypeVar

from proxy.config.keys import (
    BOOL,
    Key,
    Kind,
    default_of,
    is_secret,
    keys,
    kind_of,
    section_of,
    yaml_fields,
)
from proxy.config.values import ConfigIssue

T = TypeVar("T")


class Reader:
    """Walks the raw YAML tree, recording every problem instead of stopping at the first."""

    def __init__(
        self,
        file: str,
        base_dir: Path,
        variables: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.file = file
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
            if (section := section_of(s, default)) is not None:
                children = frozenset(n for _, t, n in fields if t.under == name)
                values[f.name] = self._nested(s, section, where.get(name), path, default, children)
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

    def _nested(
        self, s: Key, cls: type, raw: Any, path: str, default: Any, children: frozenset[str]
    ) -> Any:
        assert not s.many, f"{path}: read it with given"
        if s.when == "present" and raw is None:
            return None
        if s.when == "enabled":
            if not isinstance(raw, dict) or not self.get(raw, path, "enabled", BOOL.parse, False):
                self.section(raw, path, keys(cls, s.skip) | {"enabled"})
                return None
            raw = {k: v for k, v in raw.items() if k != "enabled"}
        base = None if default is MISSING else default
        return self.read(cls, raw, path, base=base, skip=s.skip, extra=children, kinds=s.kinds)

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
