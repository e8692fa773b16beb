"""The soak's upstream (bench/soak.py): a small JSON echo on every path and a
python-socketio server whose `echo` event acknowledges with what it got."""

from __future__ import annotations

import sys
from typing import Any

import socketio
from aiohttp import web


def main() -> None:
    port = int(sys.argv[1])
    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = web.Application()
    sio.attach(app)

    @sio.event  # type: ignore[misc]
    async def echo(sid: str, data: Any) -> Any:
        return data

    async def rest(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"path": request.path, "length": len(body)})

    app.router.add_route("*", "/api/{tail:.*}", rest)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
