"""`cache.shared` and `revocation` from YAML: the shared level's URL, secrets and bounds.

URLs: `redis://` and `rediss://` (TLS) `host[:port][/db]`; `redis+sentinel://` and
`rediss+sentinel://` `h1[:p1],h2[:p2]/service[/db]`; `redis+cluster://` and
`rediss+cluster://` `h1[:p1],h2[:p2]`. Credentials never sit in the URL: a password
comes from `password_file` (or `${ENV}`), so it cannot leak with a logged URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from proxy.config.model import Listen, RedisTarget, Revocation, SharedCache
from proxy.config.values import (
    Reader,
    bool_value,
    parse_duration,
    positive_int,
    str_value,
)

_SCHEMES: Final = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT: Final = {"single": 6379, "sentinel": 26379, "cluster": 6379}

SHARED_KEYS: Final = {
    "url",
    "username",
    "password",
    "password_file",
    "ca_file",
    "cert_file",
    "key_file",
    "timeout",
    "connect_timeout",
    "breaker_failures",
    "breaker_seconds",
    "flight_wait",
    "budget",
    "resync_seconds",
    "key_prefix",
}


def redis_target(url: str) -> RedisTarget:
    """Parse a shared-level URL; ValueError says what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(
            f"expected a URL starting with one of {', '.join(s + '://' for s in _SCHEMES)}"
        )
    kind, tls = _SCHEMES[scheme.lower()]
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        raise ValueError(
            "credentials do not go in the URL (it is logged): use cache.shared.username "
            "and cache.shared.password_file"
        )
    if "?" in rest or "#" in rest:
        raise ValueError("query strings and fragments are not supported; use the cache.shared keys")
    hosts = tuple(_host_port(part, _DEFAULT_PORT[kind]) for part in netloc.split(","))
    parts = [p for p in path.split("/") if p]
    service, db = "", 0
    if kind == "sentinel":
        if not parts:
            raise ValueError("a Sentinel URL names the primary: redis+sentinel://h:26379/mymaster")
        service, parts = parts[0], parts[1:]
    if kind == "single" and len(hosts) > 1:
        raise ValueError("several hosts need redis+sentinel:// or redis+cluster://")
    if parts:
        if kind == "cluster" or len(parts) > 1 or not parts[0].isdigit():
            raise ValueError("the path may only be a database number (not with Cluster)")
        db = int(parts[0])
    return RedisTarget(kind, tls, hosts, db, service)  # type: ignore[arg-type]


def _host_port(text: str, default: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:6379
        host, _, after = text[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in {text!r}")
        return host, int(port_text)
    return host, default


def shared_cache(r: Reader, raw: Any) -> SharedCache | None:
    """`cache.shared`, or None when it is absent (a lone sidecar needs no Redis)."""
    if raw is None:
        return None
    key = "cache.shared"
    sec = r.section(raw, key, SHARED_KEYS)
    url = r.required(sec, key, "url")
    if url is None:
        return None
    try:
        target = redis_target(str_value(url))
    except (ValueError, TypeError) as exc:
        r.problem(f"{key}.url", str(exc))
        return None
    ca_file = r.get(sec, key, "ca_file", str_value, "")
    cert_file = r.get(sec, key, "cert_file", str_value, "")
    key_file = r.get(sec, key, "key_file", str_value, "")
    if not target.tls and (ca_file or cert_file or key_file):
        r.problem(f"{key}.url", "ca_file/cert_file/key_file need a TLS URL (rediss://)")
    if bool(cert_file) != bool(key_file):
        r.problem(f"{key}.cert_file", "a client certificate needs both cert_file and key_file")
    for name, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path and not (r.base_dir / path).is_file():
            r.problem(f"{key}.{name}", f"no such file: {path!r}")
    shared = SharedCache(
        target=target,
        url=str_value(url),
        username=r.get(sec, key, "username", str_value, ""),
        password=r.secret(sec, key, "password", required=False),
        ca_file=str(r.base_dir / ca_file) if ca_file else "",
        cert_file=str(r.base_dir / cert_file) if cert_file else "",
        key_file=str(r.base_dir / key_file) if key_file else "",
        timeout=r.get(sec, key, "timeout", parse_duration, 0.01),
        connect_timeout=r.get(sec, key, "connect_timeout", parse_duration, 0.5),
        breaker_failures=r.get(sec, key, "breaker_failures", positive_int, 5),
        breaker_seconds=r.get(sec, key, "breaker_seconds", parse_duration, 5.0),
        flight_wait=r.get(sec, key, "flight_wait", parse_duration, 1.0),
        budget=r.get(sec, key, "budget", bool_value, True),
        resync_seconds=r.get(sec, key, "resync_seconds", parse_duration, 5.0),
        key_prefix=r.get(sec, key, "key_prefix", str_value, "clerk-auth-proxy"),
    )
    for name in ("timeout", "connect_timeout", "breaker_seconds", "resync_seconds"):
        if getattr(shared, name) <= 0:
            r.problem(f"{key}.{name}", "must be greater than 0")
    if shared.timeout > 1.0:
        r.problem(f"{key}.timeout", "at most 1 s: every cache miss may wait this long")
    if not shared.key_prefix or any(c in shared.key_prefix for c in "{} \t\r\n"):
        r.problem(f"{key}.key_prefix", "must be non-empty, without braces or spaces")
    return shared


def revocation(r: Reader, raw: Any, listen: Callable[[Any], Listen]) -> Revocation:
    """`revocation`; `listen` parses its `listen` section (host 127.0.0.1, port 9091 by
    default)."""
    key = "revocation"
    sec = r.section(raw, key, {"secret", "secret_file", "default_ttl_seconds", "listen"})
    secret = r.secret(sec, key, "secret", required=False)
    if secret and len(secret) < 16:
        r.problem(f"{key}.secret", "too short: use at least 16 random characters")
    ttl = r.get(sec, key, "default_ttl_seconds", parse_duration, 86_400.0)
    if ttl <= 0:
        r.problem(f"{key}.default_ttl_seconds", "must be greater than 0")
    return Revocation(secret=secret, default_ttl_seconds=ttl, listen=listen(sec.get("listen")))
