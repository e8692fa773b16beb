"""The WebSocket upgrade handshake as the client sent it: is it one, may its Origin open
one, which subprotocols it offers. No I/O."""

from __future__ import annotations

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
