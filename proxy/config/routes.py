"""`routes:` and `default_route:` entries → `Route`s: globs, methods, auth mode, scopes and
principal types, every problem named by its key."""

from __future__ import annotations

from typing import Any

from proxy.config.model import HTTP_METHODS, PRINCIPAL_TYPES, Route
from proxy.config.values import Reader, str_list, str_value, validate_glob

_NO_STRINGS: tuple[str, ...] = ()
_ROUTE_KEYS = {"name", "path", "methods", "auth", "scopes", "principal_types"}


def parse_route(r: Reader, raw: Any, key: str, *, default: bool) -> Route | None:
    """One entry of `routes:` (or `default_route:`, which has no `path`); None when it is
    not a mapping. Problems go to `r`."""
    allowed = _ROUTE_KEYS - {"path"} if default else _ROUTE_KEYS
    if not isinstance(raw, dict):
        r.problem(key, f"expected a mapping, got {type(raw).__name__}")
        return None
    r.section(raw, key, allowed)
    name = r.get(raw, key, "name", str_value, "default" if default else "")
    path = "/**"
    if not default:
        p = r.required(raw, key, "path")
        if p is not None:
            try:
                validate_glob(str_value(p))
                path = str_value(p)
            except (ValueError, TypeError) as exc:
                r.problem(f"{key}.path", str(exc))
        if not name:
            name = path
    auth = r.get(raw, key, "auth", str_value, "required")
    if auth not in ("public", "optional", "required"):
        r.problem(f"{key}.auth", f"must be public, optional or required, got {auth!r}")
        auth = "required"
    methods_raw = r.get(raw, key, "methods", str_list, _NO_STRINGS)
    methods: frozenset[str] | None = None
    if methods_raw:
        methods = frozenset(m.upper() for m in methods_raw)
        bad = sorted(m for m in methods if m not in HTTP_METHODS)
        if bad:
            r.problem(f"{key}.methods", f"unknown HTTP method(s): {', '.join(bad)}")
        if "GET" in methods:
            methods = methods | {"HEAD"}  # HEAD is GET without a body
    scopes = r.get(raw, key, "scopes", str_list, _NO_STRINGS)
    ptypes_raw = r.get(raw, key, "principal_types", str_list, _NO_STRINGS)
    ptypes = frozenset(ptypes_raw) if ptypes_raw else None
    if ptypes:
        bad = sorted(t for t in ptypes if t not in PRINCIPAL_TYPES)
        if bad:
            r.problem(
                f"{key}.principal_types",
                f"unknown principal type(s) {', '.join(bad)}; known: {', '.join(PRINCIPAL_TYPES)}",
            )
    if auth == "public" and (scopes or ptypes):
        r.problem(key, "a public route cannot require scopes or principal_types")
    return Route(
        name=name,
        path=path,
        methods=methods,
        auth=auth,  # type: ignore[arg-type]
        scopes=scopes,
        principal_types=ptypes,
    )
