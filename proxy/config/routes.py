"""`routes:` and `default_route:` entries → `Route`s: globs, methods, auth mode, scopes,
principal types and the allow-lists of machines and OAuth clients, every problem named by
its key."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Final

from proxy.config.model import HTTP_METHODS, PRINCIPAL_TYPES, IssuerRule, Route
from proxy.config.reader import Reader
from proxy.config.values import validate_glob

# A Clerk machine id; also what a Clerk M2M token's scopes are (the machines it may call).
MACHINE_PREFIX: Final = "mch_"
_MACHINE_ID = re.compile(MACHINE_PREFIX + r"[A-Za-z0-9]{1,64}")
_DEFAULT = Route(name="default", path="/**")


def parse_routes(r: Reader, raw: Any) -> list[tuple[str, Route]]:
    """`routes:`, each with its key path (`routes[2]`) for later messages."""
    if raw is not None and not isinstance(raw, list):
        r.problem("routes", f"expected a list, got {type(raw).__name__}")
        return []
    out: list[tuple[str, Route]] = []
    seen: set[str] = set()
    for i, item in enumerate(raw or []):
        route = parse_route(r, item, f"routes[{i}]", default=False)
        if route is None:
            continue
        if route.name in seen:
            r.problem(f"routes[{i}].name", f"duplicate route name {route.name!r}")
        seen.add(route.name)
        out.append((f"routes[{i}]", route))
    return out


def parse_route(r: Reader, raw: Any, key: str, *, default: bool) -> Route | None:
    """One entry of `routes:` (or `default_route:`, which has no `path`); None when it is
    not a mapping. Problems go to `r`."""
    if not isinstance(raw, dict):
        r.problem(key, f"expected a mapping, got {type(raw).__name__}")
        return None
    route = r.read(
        Route,
        raw,
        key,
        base=_DEFAULT if default else None,
        skip=("path",) if default else (),
        issuers=_issuers(r, raw.get("issuers"), f"{key}.issuers"),
    )
    if not default:
        try:
            validate_glob(route.path)
        except ValueError as exc:
            if route.path:
                r.problem(f"{key}.path", str(exc))
        route = replace(route, name=route.name or route.path)
    methods = route.methods
    if methods:
        methods = frozenset(m.upper() for m in methods)
        bad = sorted(m for m in methods if m not in HTTP_METHODS)
        if bad:
            r.problem(f"{key}.methods", f"unknown HTTP method(s): {', '.join(bad)}")
        if "GET" in methods:
            methods = methods | {"HEAD"}  # HEAD is GET without a body
    ptypes = route.principal_types
    if ptypes:
        bad = sorted(t for t in ptypes if t not in PRINCIPAL_TYPES)
        if bad:
            r.problem(
                f"{key}.principal_types",
                f"unknown principal type(s) {', '.join(bad)}; known: {', '.join(PRINCIPAL_TYPES)}",
            )
    machines, clients = route.machines, route.oauth_clients
    _check_allow_lists(r, raw, key, machines, clients)
    if (machines or clients) and ptypes is None:
        # An allow-list admits only its own kind unless principal_types says otherwise.
        ptypes = frozenset(
            kind for kind, listed in (("machine", machines), ("oauth", clients)) if listed
        )
    lists = (("machine", machines, "machines"), ("oauth", clients, "oauth_clients"))
    for kind, listed, list_key in lists:
        if listed and ptypes is not None and kind not in ptypes:
            r.problem(f"{key}.{list_key}", f"has no effect: principal_types does not admit {kind}")
    if route.auth == "public" and (route.scopes or ptypes):
        r.problem(
            key, "a public route cannot require scopes, principal_types, machines or oauth_clients"
        )
    if route.auth == "public" and route.issuers is not None:
        r.problem(key, "a public route cannot name issuers")
    return replace(route, methods=methods, principal_types=ptypes)


def _check_allow_lists(
    r: Reader,
    raw: dict[str, Any],
    key: str,
    machines: frozenset[str] | None,
    clients: frozenset[str] | None,
) -> None:
    bad = sorted(m for m in machines or () if not _MACHINE_ID.fullmatch(m))
    if bad:
        r.problem(
            f"{key}.machines",
            f"expected Clerk machine ids (mch_ followed by letters and digits), got {bad[0]!r}",
        )
    if any(not c or not c.isprintable() or " " in c for c in clients or ()):
        r.problem(f"{key}.oauth_clients", "expected OAuth client ids (no spaces or blanks)")
    if raw.get("machines") is not None and not machines:
        r.problem(f"{key}.machines", "an empty list would admit no machine: remove the key")
    if raw.get("oauth_clients") is not None and not clients:
        r.problem(f"{key}.oauth_clients", "an empty list would admit no client: remove the key")


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
        if name == "clerk" and rules:
            r.problem(k, "Clerk's rules are the route's own scopes/principal_types: set them there")
        rule = r.read(IssuerRule, rules, k)
        bad = sorted(t for t in rule.principal_types or () if t not in PRINCIPAL_TYPES)
        if bad:
            r.problem(f"{k}.principal_types", f"unknown principal type(s) {', '.join(bad)}")
        out.append((str(name), rule))
    return tuple(out)


def check_route_issuers(r: Reader, routes: list[tuple[str, Route]], names: set[str]) -> None:
    """Every issuer a route names must be configured (or be clerk)."""
    for key, route in routes:
        for name, _ in route.issuers or ():
            if name != "clerk" and name not in names:
                known = ", ".join(sorted({"clerk", *names}))
                r.problem(f"{key}.issuers.{name}", f"no issuer of that name (known: {known})")
