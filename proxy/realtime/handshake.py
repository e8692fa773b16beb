"""The WebSocket upgrade handshake: is the client's one, may its Origin open one, which
subprotocols it offers; and the byte relay's own handshakes on both legs (the 101 it
answers, the upgrade it sends upstream, the upstream's answer read). No I/O."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from proxy.core.errors import BAD_REQUEST, ProxyError


def is_upgrade(request: web.Request) -> bool:
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").strip().lower() == "websocket"
        and "upgrade" in connection
    )


def check_origin(origin: str | None, allowed: tuple[str, ...]) -> None:
    """Browsers always send Origin; other clients (Node, Python) usually do not and are
    not exposed to cross-site WebSocket hijacking, so a missing Origin passes."""
    if not allowed or origin is None:
        return
    if origin.rstrip("/").lower() not in {a.rstrip("/").lower() for a in allowed}:
        raise ProxyError(BAD_REQUEST, "this Origin may not open WebSockets", status=403)


def client_protocols(request: web.Request) -> tuple[str, ...]:
    values = request.headers.getall("Sec-WebSocket-Protocol", ())
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


# --- the byte relay's own handshakes (RFC 6455 §4) ---------------------------------------

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Fields the proxy writes itself on the upstream leg: each leg has its own handshake.
_OWN_FIELDS: Final = frozenset({"host", "upgrade", "connection", "content-length"})


def accept_key(key: str) -> str:
    # RFC 6455 fixes SHA-1 here: a handshake check, not a security boundary.
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()  # noqa: S324
    return base64.b64encode(digest).decode("ascii")


def switching_protocols(key: str, protocol: str | None) -> bytes:
    """The 101 answer to a client's upgrade (no extension: the byte relay takes none)."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upgrade_request(
    target: str,
    host: str,
    key: str,
    protocols: tuple[str, ...],
    fields: Iterable[tuple[str, str]],
) -> bytes:
    """The proxy's upgrade request to the upstream: the admitted request's fields, minus
    the client's own handshake (`Sec-WebSocket-*`: key, version, extensions)."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    for name, value in fields:
        low = name.lower()
        if low in _OWN_FIELDS or low.startswith("sec-websocket-"):
            continue
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    status: int
    accepted: bool  # 101 with the right Sec-WebSocket-Accept and no extension
    protocol: str | None


def read_answer(head: bytes, key: str, offered: tuple[str, ...]) -> UpstreamAnswer:
    """The upstream's answer head (up to, not including, the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    protocol = fields.get("sec-websocket-protocol") or None
    accepted = (
        status == 101
        and fields.get("upgrade", "").lower() == "websocket"
        and fields.get("sec-websocket-accept") == accept_key(key)
        and not fields.get("sec-websocket-extensions")
        and (protocol is None or protocol in offered)
    )
    return UpstreamAnswer(status, accepted, protocol)
