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
from proxy.config.clerk import parse_clerk
from proxy.config.connections import (
    parse_connections,
    parse_shutdown,
    parse_websocket,
)
from proxy.config.issuers import parse_issuers
from proxy.config.model import (
    DEFAULT_GLOBAL_BUCKET,
    DEFAULT_PER_IP_BUCKET,
    HTTP_METHODS,
    PRINCIPAL_TYPES,
    AuthMode,
    Bucket,
    Cache,
    Clerk,
    Config,
    Headers,
    Listen,
    Logging,
    Route,
    Shutdown,
    Upstream,
    VerificationBudget,
    WebSocket,
)
from proxy.config.routes import check_route_issuers, parse_route
from proxy.config.shared import revocation, shared_cache
from proxy.config.sources import Source, substitute, substitute_env
from proxy.config.values import (
    ConfigError,
    ConfigIssue,
    Reader,
    bool_value,
    float_value,
    fraction,
    http_url,
    network,
    non_negative_int,
    parse_duration,
    parse_size,
    port,
    positive_int,
    prefix_len,
    str_list,
    str_value,
    validate_glob,
)

__all__ = [
    "DEFAULT_GLOBAL_BUCKET",
    "DEFAULT_PER_IP_BUCKET",
    "HTTP_METHODS",
    "PRINCIPAL_TYPES",
    "AuthMode",
    "Bucket",
    "Cache",
    "Clerk",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Headers",
    "Listen",
    "Logging",
    "Route",
    "Shutdown",
    "Upstream",
    "VerificationBudget",
    "WebSocket",
    "build_config",
    "load_config",
    "parse_duration",
    "parse_size",
    "substitute_env",
    "validate_glob",
]

_LISTEN_KEYS = {"host", "port"}
_NO_STRINGS: tuple[str, ...] = ()


def _listen(
    r: Reader, raw: Any, key: str, default_port: int, default_host: str = "0.0.0.0"
) -> Listen:
    client_facing = key == "listen"
    sec = r.section(raw, key, _LISTEN_KEYS | {"fast_path"} if client_facing else _LISTEN_KEYS)
    return Listen(
        host=r.get(sec, key, "host", str_value, default_host),
        port=r.get(sec, key, "port", port, default_port),
        fast_path=r.get(sec, key, "fast_path", bool_value, True) if client_facing else False,
    )


def _forward_auth(r: Reader, raw: Any) -> Listen | None:
    """`forward_auth`: the listener an ingress asks (request.forward_auth); None when off."""
    sec = r.section(raw, "forward_auth", _LISTEN_KEYS | {"enabled"})
    if not r.get(sec, "forward_auth", "enabled", bool_value, False):
        return None
    return _listen(r, {k: sec[k] for k in _LISTEN_KEYS if k in sec}, "forward_auth", 8081)


_TOP_KEYS = {
    "environment",
    "allow_inline_secrets",
    "listen",
    "admin",
    "upstream",
    "clerk",
    "cache",
    "verification_budget",
    "routes",
    "default_route",
    "forward_authorization",
    "headers",
    "trusted_proxies",
    "websocket",
    "shutdown",
    "logging",
    "workers",
    "revocation",
    "issuers",
    "connections",
    "forward_auth",
}


def build_config(
    raw: Any,
    *,
    file: str,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    sources: Mapping[str, Source] | None = None,
) -> Config:
    """Validate an already-parsed YAML tree. Raises ConfigError listing every problem.
    `sources` (from the file's text) lets messages name variables and finds keys written
    in the file."""
    sources = sources or {}
    variables = {path: src.variables for path, src in sources.items() if src.variables}
    r = Reader(file, env if env is not None else os.environ, base_dir or Path("."), variables)
    top = r.section(raw, "", _TOP_KEYS)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(r.issues)
    environment = r.get(top, "", "environment", str_value, "local")

    up = r.section(
        top.get("upstream"),
        "upstream",
        {
            "url",
            "connect_timeout",
            "read_timeout",
            "max_body_size",
            "readiness_path",
            "pool_size",
        },
    )
    up_url = r.required(up, "upstream", "url")
    try:
        up_url = http_url(up_url) if up_url is not None else "http://127.0.0.1:3000"
    except (ValueError, TypeError) as exc:
        r.problem("upstream.url", str(exc))
        up_url = "http://127.0.0.1:3000"
    upstream = Upstream(
        url=up_url,
        connect_timeout=r.get(up, "upstream", "connect_timeout", parse_duration, 5.0),
        read_timeout=r.get(up, "upstream", "read_timeout", parse_duration, 60.0),
        max_body_size=r.get(up, "upstream", "max_body_size", parse_size, 10 * 1024 * 1024),
        readiness_path=r.get(up, "upstream", "readiness_path", str_value, "/"),
        pool_size=r.get(up, "upstream", "pool_size", non_negative_int, 0),
    )
    if not upstream.readiness_path.startswith("/"):
        r.problem("upstream.readiness_path", "must start with '/'")

    clerk = parse_clerk(
        r,
        top.get("clerk"),
        environment=environment,
        allow_inline=r.get(top, "", "allow_inline_secrets", bool_value, False),
        written={path: src.written for path, src in sources.items()},
    )

    ca = r.section(
        top.get("cache"),
        "cache",
        {
            "ttl_seconds",
            "negative_ttl_seconds",
            "max_entries",
            "stale_if_error_seconds",
            "shared",
            "refresh_ahead",
        },
    )
    cache = Cache(
        ttl_seconds=r.get(ca, "cache", "ttl_seconds", parse_duration, 60.0),
        negative_ttl_seconds=r.get(ca, "cache", "negative_ttl_seconds", parse_duration, 10.0),
        max_entries=r.get(ca, "cache", "max_entries", positive_int, 100_000),
        stale_if_error_seconds=r.get(ca, "cache", "stale_if_error_seconds", parse_duration, 0.0),
        shared=shared_cache(r, ca.get("shared")),
        refresh_ahead=r.get(ca, "cache", "refresh_ahead", fraction, 0.2),
    )
    if cache.shared is not None and cache.shared.timeout >= clerk.miss_deadline:
        # A miss asks the shared level before Clerk, within the miss deadline.
        r.problem(
            "cache.shared.timeout",
            f"must be under clerk.miss_deadline ({clerk.miss_deadline:g} s)",
        )

    vb = r.section(
        top.get("verification_budget"),
        "verification_budget",
        {"enabled", "global", "per_ip", "reserved_for_known"},
    )
    prefixes = {"ipv4_prefix", "ipv6_prefix"}

    def bucket(name: str, default: Bucket) -> Bucket:
        key = f"verification_budget.{name}"
        keys = {"rate", "burst"} | (prefixes if name == "per_ip" else set())
        sec = r.section(vb.get(name), key, keys)
        rate = r.get(sec, key, "rate", float_value, default.rate)
        if rate <= 0:
            r.problem(f"{key}.rate", "must be greater than 0")
        return Bucket(rate=rate, burst=r.get(sec, key, "burst", positive_int, default.burst))

    raw_per_ip = vb.get("per_ip")
    per_ip: dict[str, Any] = raw_per_ip if isinstance(raw_per_ip, dict) else {}
    budget = VerificationBudget(
        enabled=r.get(vb, "verification_budget", "enabled", bool_value, True),
        global_=bucket("global", DEFAULT_GLOBAL_BUCKET),
        per_ip=bucket("per_ip", DEFAULT_PER_IP_BUCKET),
        ipv4_prefix=r.get(per_ip, "verification_budget.per_ip", "ipv4_prefix", prefix_len(32), 32),
        ipv6_prefix=r.get(per_ip, "verification_budget.per_ip", "ipv6_prefix", prefix_len(128), 64),
        reserved_for_known=r.get(vb, "verification_budget", "reserved_for_known", fraction, 0.25),
    )

    routes: list[Route] = []
    keyed: list[tuple[str, Route]] = []
    raw_routes = top.get("routes")
    if raw_routes is not None and not isinstance(raw_routes, list):
        r.problem("routes", f"expected a list, got {type(raw_routes).__name__}")
    else:
        seen: set[str] = set()
        for i, item in enumerate(raw_routes or []):
            route = parse_route(r, item, f"routes[{i}]", default=False)
            if route is None:
                continue
            if route.name in seen:
                r.problem(f"routes[{i}].name", f"duplicate route name {route.name!r}")
            seen.add(route.name)
            routes.append(route)
            keyed.append((f"routes[{i}]", route))
    default_route = parse_route(r, top.get("default_route") or {}, "default_route", default=True)
    if default_route is not None:
        keyed.append(("default_route", default_route))

    hd = r.section(top.get("headers"), "headers", {"prefix", "request_id"})
    prefix = r.get(hd, "headers", "prefix", str_value, "X-Auth-")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*-", prefix):
        r.problem("headers.prefix", f"must be a header-name prefix ending in '-', got {prefix!r}")
    request_id = r.get(hd, "headers", "request_id", str_value, "X-Request-Id")
    if request_id and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", request_id):
        r.problem("headers.request_id", f"must be a header name or empty, got {request_id!r}")
    elif request_id.lower().startswith(prefix.lower()):
        r.problem(
            "headers.request_id",
            f"must not start with headers.prefix ({prefix}): those are stripped",
        )

    lg = r.section(top.get("logging"), "logging", {"level", "access_log"})
    level = r.get(lg, "logging", "level", str_value, "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        r.problem(
            "logging.level", f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}"
        )
        level = "INFO"

    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for i, item in enumerate(r.get(top, "", "trusted_proxies", str_list, _NO_STRINGS)):
        try:
            trusted.append(network(item))
        except ValueError as exc:
            r.problem(f"trusted_proxies[{i}]", str(exc))

    cfg = Config(
        source=file,
        environment=environment,
        listen=_listen(r, top.get("listen"), "listen", 8080),
        admin=_listen(r, top.get("admin"), "admin", 9090),
        upstream=upstream,
        clerk=clerk,
        cache=cache,
        verification_budget=budget,
        routes=tuple(routes),
        default_route=default_route or Route(name="default", path="/**"),
        forward_authorization=r.get(top, "", "forward_authorization", bool_value, False),
        headers=Headers(prefix=prefix, request_id=request_id),
        trusted_proxies=tuple(trusted),
        websocket=parse_websocket(r, top.get("websocket")),
        shutdown=parse_shutdown(r, top.get("shutdown")),
        logging=Logging(
            level=level, access_log=r.get(lg, "logging", "access_log", bool_value, True)
        ),
        workers=r.get(top, "", "workers", positive_int, 1),
        revocation=revocation(
            r,
            top.get("revocation"),
            lambda raw: _listen(r, raw, "revocation.listen", 9091, "127.0.0.1"),
        ),
        issuers=parse_issuers(r, top.get("issuers"), clerk.issuer),
        connections=parse_connections(r, top.get("connections")),
        forward_auth=_forward_auth(r, top.get("forward_auth")),
        variables=variables,
        warnings=upstream_warnings(upstream.url) + scope_warnings(keyed),
        inputs=tuple(r.files),
    )
    check_route_issuers(r, keyed, {i.name for i in cfg.issuers})
    if cfg.listen.port and cfg.listen.port == cfg.admin.port and cfg.listen.host == cfg.admin.host:
        r.problem("admin.port", "must differ from listen.port")
    fa = cfg.forward_auth
    for other, name in ((cfg.listen, "listen.port"), (cfg.admin, "admin.port")):
        if fa is not None and fa.port and (fa.host, fa.port) == (other.host, other.port):
            r.problem("forward_auth.port", f"must differ from {name}")
    control = cfg.revocation.listen.port
    if cfg.revocation.secret and control and control in (cfg.listen.port, cfg.admin.port):
        r.problem("revocation.listen.port", "must differ from listen.port and admin.port")
    if r.issues:
        raise ConfigError(r.issues)
    return cfg


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
        raw = yaml.safe_load(done.text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([*issues, ConfigIssue(file, where, f"invalid YAML: {exc}")]) from None
    try:
        cfg = build_config(raw, file=file, env=environ, base_dir=p.parent, sources=done.sources())
    except ConfigError as exc:
        raise ConfigError(issues + exc.issues) from None
    if issues:
        raise ConfigError(issues)
    return dataclasses.replace(cfg, inputs=(file, *cfg.inputs))
