"""The realm of a verdict: a digest of the configuration that reached it.

A verdict on a token (a Principal, or a refusal) holds for the config that judged it: the
Clerk keys that asked Clerk, or an issuer's audiences, claim mapping and introspection
client. Processes on one Redis share verdicts only within a realm (`auth.shared.level`),
so a process whose config for that issuer says otherwise — another audience, another
issuer behind the same name or prefix, the config before a rollout — verifies for
itself instead of adopting the other's answer.

Every field of the section counts, nested ones too, except those listed as unable to
change a verdict (timeouts, cache durations, a display name): a field added later is in
the realm until someone shows it cannot decide one. Secret fields (`repr=False`) enter as
a hash of their value. The digest never leaves the process: the shared level folds it
into the keys it derives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Final

from proxy.config.model import Clerk, Issuer

REALM_SIZE: Final = 16

# How long or how often something is fetched or waited for, and names for people.
CLERK_IGNORED: Final = frozenset(
    {
        "instance",
        "instance_type",
        "timeout",
        "jwks_cache_seconds",
        "jwks_min_refetch_seconds",
        "miss_deadline",
        "backoff_initial",
        "backoff_max",
    }
)
ISSUER_IGNORED: Final = frozenset({"jwks_cache_seconds", "jwks_min_refetch_seconds", "timeout"})


def clerk_realm(cfg: Clerk) -> bytes:
    """The realm of Clerk's verdicts under `cfg`."""
    return _digest("clerk", _plain(cfg, CLERK_IGNORED))


def issuer_realm(cfg: Issuer) -> bytes:
    """The realm of the verdicts of issuer `cfg` (by introspection or by its keys)."""
    return _digest("issuer", _plain(cfg, ISSUER_IGNORED))


def _digest(kind: str, plain: Any) -> bytes:
    text = json.dumps([kind, plain], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()[:REALM_SIZE]


def _plain(value: Any, ignored: frozenset[str] = frozenset()) -> Any:
    """`value` as JSON-ready data: a dataclass as {field: value}, tuples and sets as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            if f.name in ignored:
                continue
            item = getattr(value, f.name)
            if not f.repr and isinstance(item, str):
                out[f.name] = {"sha256": hashlib.sha256(item.encode()).hexdigest()}
            else:
                out[f.name] = _plain(item)
        return out
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, frozenset | set):
        return sorted(_plain(v) for v in value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"a verdict's config holds a {type(value).__name__}: say how it digests")
