"""`routes:` and `default_route:` entries → `Route`s: globs, methods, auth mode, scopes,
principal types and the allow-lists of machines and OAuth clients, every problem named by
its key."""

from __future__ import annotations

import re
from typing import Any, Final

from proxy.config.model import HTTP_METHODS, PRINCIPAL_TYPES, IssuerRule, Route
from proxy.config.values import Reader, str_list, str_value, validate_glob

_NO_STRINGS: tuple[str, ...] = ()
_ROUTE_KEYS = {
    "name",
    "path",
    "methods",
    "auth",
    "scopes",
    "principal_types",
    "machines",
    "oauth_clients",
    "issuers",
}
# A Clerk machine id; also what a Clerk M2M token's scopes are (the machines it may call).
MACHINE_PREFIX: Final = "mch_"
_MACHINE_ID = re.compile(MACHINE_PREFIX + r"[A-Za-z0-9]{1,64}")
_RULE_KEYS = {"scopes", "clients", "principal_types"}


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
    machines, clients = _allow_lists(r, raw, key)
    if (machines or clients) and ptypes is None:
        # An allow-list admits only its own kind unless principal_types says otherwise.
        ptypes = frozenset(
            kind for kind, listed in (("machine", machines), ("oauth", clients)) if listed
        )
    lists = (("machine", machines, "machines"), ("oauth", clients, "oauth_clients"))
    for kind, listed, list_key in lists:
        if listed and ptypes is not None and kind not in ptypes:
            r.problem(f"{key}.{list_key}", f"has no effect: principal_types does not admit {kind}")
    if auth == "public" and (scopes or ptypes):
        r.problem(
            key, "a public route cannot require scopes, principal_types, machines or oauth_clients"
        )
    issuers = _issuers(r, raw.get("issuers"), f"{key}.issuers")
    if auth == "public" and issuers is not None:
        r.problem(key, "a public route cannot name issuers")
    return Route(
        name=name,
        path=path,
        methods=methods,
        auth=auth,  # type: ignore[arg-type]
        scopes=scopes,
        principal_types=ptypes,
        machines=machines,
        oauth_clients=clients,
        issuers=issuers,
    )


def _allow_lists(
    r: Reader, raw: dict[str, Any], key: str
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    machines_raw = r.get(raw, key, "machines", str_list, _NO_STRINGS)
    bad = [m for m in machines_raw if not _MACHINE_ID.fullmatch(m)]
    if bad:
        r.problem(
            f"{key}.machines",
            f"expected Clerk machine ids (mch_ followed by letters and digits), got {bad[0]!r}",
        )
    clients_raw = r.get(raw, key, "oauth_clients", str_list, _NO_STRINGS)
    if any(not c or not c.isprintable() or " " in c for c in clients_raw):
        r.problem(f"{key}.oauth_clients", "expected OAuth client ids (no spaces or blanks)")
    if "machines" in raw and not machines_raw:
        r.problem(f"{key}.machines", "an empty list would admit no machine: remove the key")
    if "oauth_clients" in raw and not clients_raw:
        r.problem(f"{key}.oauth_clients", "an empty list would admit no client: remove the key")
    return (
        frozenset(machines_raw) if machines_raw else None,
        frozenset(clients_raw) if clients_raw else None,
    )


def _types(r: Reader, raw: dict[str, Any], key: str) -> frozenset[str] | None:
    names = r.get(raw, key, "principal_types", str_list, _NO_STRINGS)
    bad = sorted(t for t in names if t not in PRINCIPAL_TYPES)
    if bad:
        r.problem(f"{key}.principal_types", f"unknown principal type(s) {', '.join(bad)}")
    return frozenset(names) if names else None


def _issuers(r: Reader, raw: Any, key: str) -> tuple[tuple[str, IssuerRule], ...] | None:
    """`issuers:` as a list of names (no rules of their own) or a mapping name → rules.
    Whether each name is configured is checked once issuers are read (`check_route_issuers`)."""
    if raw is None:
        return None
    if isinstance(raw, list) and all(isinstance(n, str) for n in raw):
        raw = {n: None for n in raw}
    if not isinstance(raw, dict) or not raw:
        r.problem(key, "expected a non-empty list of issuer names or a mapping name → rules")
        return None
    out: list[tuple[str, IssuerRule]] = []
    for name, rules in raw.items():
        k = f"{key}.{name}"
        sec = r.section(rules, k, _RULE_KEYS)
        if name == "clerk" and sec:
            r.problem(k, "Clerk's rules are the route's own scopes/principal_types: set them there")
        clients = r.get(sec, k, "clients", str_list, _NO_STRINGS)
        out.append(
            (
                str(name),
                IssuerRule(
                    scopes=r.get(sec, k, "scopes", str_list, _NO_STRINGS),
                    clients=frozenset(clients) if clients else None,
                    principal_types=_types(r, sec, k),
                ),
            )
        )
    return tuple(out)


def check_route_issuers(r: Reader, routes: list[tuple[str, Route]], names: set[str]) -> None:
    """Every issuer a route names must be configured (or be clerk)."""
    for key, route in routes:
        for name, _ in route.issuers or ():
            if name != "clerk" and name not in names:
                known = ", ".join(sorted({"clerk", *names}))
                r.problem(f"{key}.issuers.{name}", f"no issuer of that name (known: {known})")
