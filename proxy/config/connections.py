"""`connections:` → `ConnectionPolicy`: the timeouts and the per-address limit every client
connection is held to, whichever door serves it (`proxy.core.timeouts`)."""

from __future__ import annotations

from typing import Any

from proxy.config.values import Reader, non_negative_int, parse_duration, parse_size
from proxy.core.timeouts import ConnectionPolicy

_KEYS = {
    "idle_timeout",
    "head_timeout",
    "body_grace",
    "min_body_rate",
    "websocket_idle_timeout",
    "max_per_address",
}
_DEFAULT = ConnectionPolicy()


def parse_connections(r: Reader, raw: Any) -> ConnectionPolicy:
    sec = r.section(raw, "connections", _KEYS)
    key = "connections"
    return ConnectionPolicy(
        idle_timeout=r.get(sec, key, "idle_timeout", parse_duration, _DEFAULT.idle_timeout),
        head_timeout=r.get(sec, key, "head_timeout", parse_duration, _DEFAULT.head_timeout),
        body_grace=r.get(sec, key, "body_grace", parse_duration, _DEFAULT.body_grace),
        min_body_rate=r.get(sec, key, "min_body_rate", parse_size, _DEFAULT.min_body_rate),
        websocket_idle_timeout=r.get(
            sec, key, "websocket_idle_timeout", parse_duration, _DEFAULT.websocket_idle_timeout
        ),
        max_per_address=r.get(
            sec, key, "max_per_address", non_negative_int, _DEFAULT.max_per_address
        ),
    )
