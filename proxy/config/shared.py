"""`cache.shared` from YAML: the shared level's URL, and what its keys' kinds cannot say.

URLs: `redis://` and `rediss://` (TLS) `host[:port][/db]`; `redis+sentinel://` and
`rediss+sentinel://` `h1[:p1],h2[:p2]/service[/db]`; `redis+cluster://` and
`rediss+cluster://` `h1[:p1],h2[:p2]`. Credentials never sit in the URL: a password
comes from `password_file` (or `${ENV}`), so it cannot leak with a logged URL.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

from proxy.config.model import RedisTarget, SharedCache
from proxy.config.reader import Reader
from proxy.config.values import str_value

_SCHEMES: Final = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT: Final = {"single": 6379, "sentinel": 26379, "cluster": 6379}
_NOWHERE: Final = RedisTarget("single", False, ())  # while a bad URL is reported


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
    url = raw.get("url") if isinstance(raw, dict) else None
    try:
        target = redis_target(str_value(url)) if url not in (None, "") else None
    except (ValueError, TypeError) as exc:
        r.problem(f"{key}.url", str(exc))
        target = None
    shared = r.read(SharedCache, raw, key, target=target or _NOWHERE)
    if target is None:
        return None
    files = {"ca_file": shared.ca_file, "cert_file": shared.cert_file, "key_file": shared.key_file}
    if not target.tls and any(files.values()):
        r.problem(f"{key}.url", "ca_file/cert_file/key_file need a TLS URL (rediss://)")
    if bool(shared.cert_file) != bool(shared.key_file):
        r.problem(f"{key}.cert_file", "a client certificate needs both cert_file and key_file")
    for name, path in files.items():
        if path and not (r.base_dir / path).is_file():
            r.problem(f"{key}.{name}", f"no such file: {path!r}")
    if shared.timeout > 1.0:
        r.problem(f"{key}.timeout", "at most 1 s: every cache miss may wait this long")
    if not shared.key_prefix or any(c in shared.key_prefix for c in "{} \t\r\n"):
        r.problem(f"{key}.key_prefix", "must be non-empty, without braces or spaces")

    def placed(path: str) -> str:
        return str(r.base_dir / path) if path else ""

    return replace(
        shared,
        ca_file=placed(shared.ca_file),
        cert_file=placed(shared.cert_file),
        key_file=placed(shared.key_file),
    )
