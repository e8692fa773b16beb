"""YAML → one frozen, typed `Config` (`model`), validated once.

Every problem is collected (not just the first) as a `ConfigIssue` naming the file, the
key path and why, so `check-config` can print them all at once. What is valid but
probably a mistake goes to `Config.warnings`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from proxy.config.advice import scope_warnings, upstream_warnings
from proxy.config.clerk_keys import check_clerk
from proxy.config.issuers import parse_issuers
from proxy.config.model import Bucket, Cache, Clerk, Config, Listen, Route, VerificationBudget
from proxy.config.reader import Reader
from proxy.config.routes import check_route_issuers, parse_route, parse_routes
from proxy.config.shared import shared_cache
from proxy.config.sources import Source, substitute, substitute_env
from proxy.config.values import (
    ConfigError,
    ConfigIssue,
    network,
    parse_duration,
    parse_size,
    str_list,
    validate_glob,
)

# What code outside `config` imports from here.
__all__ = [
    "Bucket",
    "Cache",
    "Clerk",
    "Config",
    "ConfigError",
    "Listen",
    "Route",
    "VerificationBudget",
    "build_config",
    "load_config",
    "parse_duration",
    "parse_size",
    "substitute_env",
    "validate_glob",
]


def build_config(
    raw: Any,
    *,
    file: str,
    base_dir: Path | None = None,
    sources: Mapping[str, Source] | None = None,
) -> Config:
    """Validate an already-parsed YAML tree. Raises ConfigError listing every problem.
    `sources` (from the file's text) lets messages name variables and finds keys written
    in the file."""
    sources = sources or {}
    variables = {path: src.variables for path, src in sources.items() if src.variables}
    r = Reader(file, base_dir or Path("."), variables)
    if raw is not None and not isinstance(raw, dict):
        r.problem("", f"expected a mapping, got {type(raw).__name__}")
        raise ConfigError(r.issues)
    top: dict[str, Any] = raw or {}
    routes = parse_routes(r, top.get("routes"))
    default_route = parse_route(r, top.get("default_route") or {}, "default_route", default=True)
    keyed = [*routes, *([("default_route", default_route)] if default_route else [])]
    cache = top.get("cache")  # not a mapping: the section's own check reports it
    shared = shared_cache(r, cache.get("shared") if isinstance(cache, dict) else None)
    cfg = r.read(
        Config,
        top,
        "",
        source=file,
        cache=r.read(Cache, cache, "cache", shared=shared),
        routes=tuple(route for _, route in routes),
        default_route=default_route or Route(name="default", path="/**"),
        trusted_proxies=_networks(r, top),
        issuers=(),
        variables=variables,
    )
    cfg = dataclasses.replace(
        cfg,
        clerk=check_clerk(r, cfg, written={path: src.written for path, src in sources.items()}),
        issuers=parse_issuers(r, top.get("issuers"), cfg.clerk.issuer),
        warnings=upstream_warnings(cfg.upstream.url) + scope_warnings(keyed),
        inputs=tuple(r.files),
    )
    _check(r, cfg)
    check_route_issuers(r, keyed, {i.name for i in cfg.issuers})
    if r.issues:
        raise ConfigError(r.issues)
    return cfg


def _networks(
    r: Reader, top: dict[str, Any]
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`trusted_proxies`, each a network; a problem names the entry (`trusted_proxies[2]`)."""
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    names: tuple[str, ...] = r.get(top, "", "trusted_proxies", str_list, ())
    for i, item in enumerate(names):
        try:
            out.append(network(item))
        except ValueError as exc:
            r.problem(f"trusted_proxies[{i}]", str(exc))
    return tuple(out)


def _check(r: Reader, cfg: Config) -> None:
    """What no single key says: how keys fit together."""
    shared = cfg.cache.shared
    if shared is not None and shared.timeout >= cfg.clerk.miss_deadline:
        # A miss asks the shared level before Clerk, within the miss deadline.
        r.problem(
            "cache.shared.timeout",
            f"must be under clerk.miss_deadline ({cfg.clerk.miss_deadline:g} s)",
        )
    prefix, request_id = cfg.headers.prefix, cfg.headers.request_id
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*-", prefix):
        r.problem("headers.prefix", f"must be a header-name prefix ending in '-', got {prefix!r}")
    if request_id and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", request_id):
        r.problem("headers.request_id", f"must be a header name or empty, got {request_id!r}")
    elif request_id.lower().startswith(prefix.lower()):
        r.problem(
            "headers.request_id",
            f"must not start with headers.prefix ({prefix}): those are stripped",
        )
    secret = cfg.revocation.secret
    if secret and len(secret) < 16:
        r.problem("revocation.secret", "too short: use at least 16 random characters")
    if cfg.listen.port and cfg.listen.port == cfg.admin.port and cfg.listen.host == cfg.admin.host:
        r.problem("admin.port", "must differ from listen.port")
    fa = cfg.forward_auth
    for other, name in ((cfg.listen, "listen.port"), (cfg.admin, "admin.port")):
        if fa is not None and fa.port and (fa.host, fa.port) == (other.host, other.port):
            r.problem("forward_auth.port", f"must differ from {name}")
    control = cfg.revocation.listen.port
    if secret and control and control in (cfg.listen.port, cfg.admin.port):
        r.problem("revocation.listen.port", "must differ from listen.port and admin.port")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute `${VAR}`, parse and validate one YAML file."""
    p = Path(path)
    file = str(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, "", f"cannot read file: {exc.strerror}")]) from None
    environ = env if env is not None else os.environ
    done = substitute(text, environ)
    issues = [
        ConfigIssue(
            file, f"line {lineno}", f"environment variable {name} is not set (missing secret?)"
        )
        for lineno, name in done.missing
    ]
    try:
        raw, sources = done.parse()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([*issues, ConfigIssue(file, where, f"invalid YAML: {exc}")]) from None
    try:
        cfg = build_config(raw, file=file, base_dir=p.parent, sources=sources)
    except ConfigError as exc:
        raise ConfigError(issues + exc.issues) from None
    if issues:
        raise ConfigError(issues)
    return dataclasses.replace(cfg, inputs=(file, *cfg.inputs))
