"""The benchmark upstream: a minimal aiohttp app answering a small JSON body. A request's
X-Request-Id comes back on its answer, as services that trace requests do: leg (d2)
then has no head repeat in either direction."""

from __future__ import annotations

import sys

from aiohttp import web

BODY = b'{"matches":[{"id":"m1","home":"Ajax","away":"PSV","score":"2-1","minute":67}]}'


async def answer(request: web.Request) -> web.Response:
    request_id = request.headers.get("X-Request-Id")
    headers = {"X-Request-Id": request_id} if request_id is not None else None
    return web.Response(body=BODY, content_type="application/json", headers=headers)


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
