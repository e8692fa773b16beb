"""Socket.IO upstream for the fan-out leg: every client joins room "live"; a score update
with the send time is broadcast every `interval` seconds."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import socketio
from aiohttp import web


def main() -> None:
    port, interval = int(sys.argv[1]), float(sys.argv[2])
    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = web.Application()
    sio.attach(app)

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
        await sio.enter_room(sid, "live")

    async def ticker(app: web.Application) -> Any:
        async def tick() -> None:
            while True:
                await asyncio.sleep(interval)
                await sio.emit("score", {"ts": time.time()}, room="live")

        task = asyncio.create_task(tick())
        yield
        task.cancel()

    app.cleanup_ctx.append(ticker)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
