"""Where each value of a config file comes from.

`${VAR}` references are substituted line by line (so an unset one is reported with its
line), and every substitution is remembered, so that after parsing each scalar's key path
(`listen.port`, `clerk.secret_key_file`) is known with the variables its text reads and
its text as written in the file. Errors then name the variable that would fix them, and
a secret written into the file itself (rather than read from the environment) is seen
even when it hides in a `${VAR:-default}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def substitute_env(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand `${VAR}` / `${VAR:-default}`; return the text and the names left unset."""
    out, missing, _ = _substitute_line(text, env)
    return out, missing


@dataclass(frozen=True, slots=True)
class _Ref:
    """One `${VAR}` of a line: where it sits in the substituted and in the written text."""

    start: int
    end: int
    source_start: int
    source_end: int
    name: str


def _substitute_line(line: str, env: Mapping[str, str]) -> tuple[str, list[str], list[_Ref]]:
    missing: list[str] = []
    refs: list[_Ref] = []
    out: list[str] = []
    at = written = 0
    for m in _ENV_REF.finditer(line):
        name, default = m.group(1), m.group(2)
        if name in env and (env[name] != "" or default is None):
            value = env[name]
        elif default is not None:
            value = default
        else:
            missing.append(name)
            value = ""
        out.append(line[at : m.start()])
        written += m.start() - at
        refs.append(_Ref(written, written + len(value), m.start(), m.end(), name))
        out.append(value)
        written += len(value)
        at = m.end()
    out.append(line[at:])
    return "".join(out), missing, refs


@dataclass(frozen=True, slots=True)
class Source:
    """A scalar's variables and its text as written (defaults of `${VAR:-…}` included)."""

    variables: tuple[str, ...]
    written: str


@dataclass(slots=True)
class Substituted:
    """A file after substitution: its text, the variables it lacks (line, name), and
    `parse()`: its tree with each key path's `Source`."""

    text: str
    missing: list[tuple[int, str]] = field(default_factory=list)
    _lines: list[str] = field(default_factory=list)
    _out_lines: list[str] = field(default_factory=list)
    _refs: dict[int, list[_Ref]] = field(default_factory=dict)

    def parse(self) -> tuple[Any, dict[str, Source]]:
        """The YAML tree, parsed once, and every scalar's key path → `Source`. Raises
        yaml.YAMLError."""
        loader = yaml.SafeLoader(self.text)
        try:
            root = loader.get_single_node()
            tree = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
        found: dict[str, Source] = {}
        self._walk(root, "", found)
        return tree, found

    def _walk(self, node: yaml.Node | None, path: str, found: dict[str, Source]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = str(key.value)
                self._walk(value, f"{path}.{name}" if path else name, found)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, f"{path}[{i}]", found)
        elif isinstance(node, yaml.ScalarNode):
            found[path] = self._source(node)

    def _source(self, node: yaml.Node) -> Source:
        start, end = node.start_mark, node.end_mark
        empty = (start.line, start.column) == (end.line, end.column)
        names: list[str] = []
        written: list[str] = []
        for line in range(start.line, end.line + 1):
            refs = self._refs.get(line, [])
            lo = start.column if line == start.line else 0
            hi = end.column if line == end.line else len(self._lines[line])
            if empty and line < len(self._out_lines):
                # An empty value (`key: ${VAR:-}`) is marked before the blank after
                # the colon; the `${…}` that emptied it sits past that blank.
                out = self._out_lines[line]
                while hi < len(out) and out[hi] in " \t":
                    hi += 1
            for ref in refs:
                if (ref.start < hi and lo < ref.end) or (
                    ref.start == ref.end and lo <= ref.start <= hi
                ):
                    names.append(ref.name)
            if line < len(self._lines):
                text = self._lines[line]
                written.append(text[_written(refs, lo, False) : _written(refs, hi, True)])
        return Source(tuple(dict.fromkeys(names)), "\n".join(written).strip())


def _written(refs: list[_Ref], column: int, end: bool) -> int:
    """A column of the substituted line as a column of the written one; a column inside a
    substitution (or at an empty one) widens to the whole `${…}`."""
    shift = 0
    for ref in refs:
        if column < ref.start:
            break
        if column == ref.start == ref.end or ref.start < column < ref.end:
            return ref.source_end if end else ref.source_start
        if column == ref.start:
            return ref.source_start
        shift = ref.source_end - ref.end
    return column + shift


def substitute(text: str, env: Mapping[str, str]) -> Substituted:
    """Substitute every line's code (not its `#` comment: documentation examples do not
    demand variables)."""
    result = Substituted("")
    out: list[str] = []
    for index, line in enumerate(text.splitlines(keepends=True)):
        code, hash_, comment = (
            line.partition(" #") if not line.lstrip().startswith("#") else ("", "", line)
        )
        new, missing, refs = _substitute_line(code, env)
        result.missing.extend((index + 1, name) for name in missing)
        if refs:
            result._refs[index] = refs
        result._lines.append(line.rstrip("\r\n"))
        result._out_lines.append(new)
        out.append(new + hash_ + comment)
    result.text = "".join(out)
    return result
