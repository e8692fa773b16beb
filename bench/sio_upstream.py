"""Socket.IO upstream for the sockets leg: every client joins room "live"; once
`POST /start` is called, a score update carrying its send time and a sequence number is
broadcast every `interval` seconds until `POST /stop` (which answers how many were sent).
`GET /ping` answers at once: the REST probe that times the loop of whoever serves it."""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from typing import Any

import socketio
from aiohttp import web


def main() -> None:
    port, interval = int(sys.argv[1]), float(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = web.Application()
    sio.attach(app)
    state: dict[str, Any] = {"task": None, "sent": 0}

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
        await sio.enter_room(sid, "live")

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval)
            state["sent"] += 1
            await sio.emit("score", {"ts": time.time(), "seq": state["sent"]}, room="live")

    async def start(request: web.Request) -> web.Response:
        if state["task"] is None:
            state["task"] = asyncio.create_task(tick())
        return web.Response(text="started")

    async def stop(request: web.Request) -> web.Response:
        if state["task"] is not None:
            state["task"].cancel()
            state["task"] = None
        return web.json_response({"sent": state["sent"]})

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_post("/start", start)
    app.router.add_post("/stop", stop)
    app.router.add_get("/ping", ping)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
