"""Which config is live: a content hash of the effective `Config`, and the keys two differ in.

The hash is what an operator compares — `/readyz`, the start and reload lines and the
`authproxy_config_info` metric carry it — so it must name the config, not the files it
was read from: two files saying the same thing hash alike, and comments or key order do
not count. Secrets (the fields `repr=False` marks) never enter it: the hash is shown
everywhere, and a hash of a short secret can be searched. A changed secret is still
listed by `changed_keys`, by name only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import Iterator

from proxy.config.model import Config


def _leaves(value: object, path: str, *, secrets: bool) -> Iterator[tuple[str, object]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            # Where it was read from (the file's path, its secret files), not what it says.
            if not f.compare or (not path and f.name == "source"):
                continue
            child = getattr(value, f.name)
            key = f"{path}.{f.name}" if path else f.name
            if not f.repr:
                if secrets:
                    yield key, hashlib.sha256(repr(child).encode()).hexdigest()
                continue
            yield from _leaves(child, key, secrets=secrets)
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]", secrets=secrets)
    elif isinstance(value, frozenset | set):
        yield path, sorted(map(str, value))
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            yield from _leaves(value[k], f"{path}.{k}", secrets=secrets)
    elif isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        yield path, str(value)
    else:
        yield path, value


def _unhashable(value: object) -> object:
    # A repr could carry a memory address and make the hash differ between processes.
    raise TypeError(f"config fingerprint: no stable form for {type(value).__name__}")


def digest(config: Config) -> str:
    """12 hex digits of SHA-256 over the effective config, secrets excluded."""
    canonical = json.dumps(list(_leaves(config, "", secrets=False)), default=_unhashable)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def changed_keys(old: Config, new: Config) -> list[str]:
    """The key paths whose values differ (`routes[2].scopes`, `clerk.secret_key`), sorted."""
    before = dict(_leaves(old, "", secrets=True))
    after = dict(_leaves(new, "", secrets=True))
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


__all__ = ["changed_keys", "digest"]
