"""How long client connections live: `connections:` → `ConnectionPolicy` (the timeouts and
the per-address limit every connection is held to, whichever door serves it:
`proxy.core.timeouts`), `websocket:` (sockets' sizes, origins, compression, pings) and
`shutdown:` (the drain)."""

from __future__ import annotations

from typing import Any

from proxy.config.model import Shutdown, WebSocket
from proxy.config.values import (
    Reader,
    bool_value,
    non_negative_int,
    parse_duration,
    parse_size,
    str_list,
)
from proxy.core.timeouts import ConnectionPolicy

_KEYS = {
    "idle_timeout",
    "head_timeout",
    "body_grace",
    "min_body_rate",
    "websocket_idle_timeout",
    "max_per_address",
    "max_client_connections",
    "descriptor_reserve",
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
        max_client_connections=r.get(
            sec, key, "max_client_connections", non_negative_int, _DEFAULT.max_client_connections
        ),
        descriptor_reserve=r.get(
            sec, key, "descriptor_reserve", non_negative_int, _DEFAULT.descriptor_reserve
        ),
    )


_WEBSOCKET_KEYS = {
    "max_message_size",
    "allowed_origins",
    "compression",
    "upstream_compression",
    "heartbeat_seconds",
}
_NO_STRINGS: tuple[str, ...] = ()


def parse_websocket(r: Reader, raw: Any) -> WebSocket:
    ws = r.section(raw, "websocket", _WEBSOCKET_KEYS)
    return WebSocket(
        max_message_size=r.get(ws, "websocket", "max_message_size", parse_size, 1024 * 1024),
        allowed_origins=r.get(ws, "websocket", "allowed_origins", str_list, _NO_STRINGS),
        compression=r.get(ws, "websocket", "compression", bool_value, True),
        upstream_compression=r.get(ws, "websocket", "upstream_compression", bool_value, False),
        heartbeat_seconds=r.get(ws, "websocket", "heartbeat_seconds", parse_duration, 0.0),
    )


def parse_shutdown(r: Reader, raw: Any) -> Shutdown:
    sd = r.section(raw, "shutdown", {"grace_period", "delay"})
    return Shutdown(
        grace_period=r.get(sd, "shutdown", "grace_period", parse_duration, 25.0),
        delay=r.get(sd, "shutdown", "delay", parse_duration, 0.0),
    )
