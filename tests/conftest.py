"""End-to-end suites run twice: through the proxy's listener with the fast path
(`frontdoor`, what `clerk-auth-proxy run` serves by default) and without it
(`listen.fast_path: false`: aiohttp's protocol on every connection, still timed, limited
and drained by the listener). Both must give every answer those suites assert.

The suite tests the request path as it ships: compiled by mypyc (setup.py) into
proxy/*.so, which shadow the .py files. A .so older than its source would test stale
code, so the run stops first."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import settings

from proxy.request.app import PROXY
from tests.support import FastPathServer

BOTH_FRONT_DOORS = {
    "tests.test_forward",
    "tests.test_attacks",
    "tests.test_front_door_rows",
    "tests.test_log_lines",
    "tests.test_auth_e2e",
    "tests.test_websocket",
    "tests.test_socketio_e2e",
}

Serve = Callable[..., Awaitable[TestServer]]

# `make test` draws the same examples on every machine: a property that fails there
# fails on every run and can be reproduced, instead of one fresh clone in many
# drawing the example that breaks it (CI failed twice that way). Exploring with
# random examples is asked for by name: `HYPOTHESIS_PROFILE=explore` (as `make fuzz`
# does for the differential suite with DIFFERENTIAL_FUZZ).
settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def pytest_sessionstart(session: pytest.Session) -> None:
    package = Path(__file__).resolve().parent.parent / "proxy"
    stale = [
        str(built.relative_to(package))
        for built in package.rglob("*.so")
        if not built.name.startswith("_native__mypyc")  # the group's shared library
        and built.stat().st_mtime
        < (built.parent / (built.name.split(".")[0] + ".py")).stat().st_mtime
    ]
    if stale:
        pytest.exit(f"compiled modules older than their source: {stale}; run `make test`", 2)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "front_door" in metafunc.fixturenames and metafunc.module.__name__ in BOTH_FRONT_DOORS:
        metafunc.parametrize("front_door", ["fast", "aiohttp"], indirect=True)


@pytest.fixture
def front_door(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "aiohttp"))


@pytest_asyncio.fixture
async def aiohttp_server(aiohttp_server: Serve, front_door: str) -> AsyncIterator[Serve]:
    """pytest-aiohttp's factory, serving proxy apps through the front door under test."""
    servers: list[FastPathServer] = []

    async def serve(app: web.Application, **kwargs: Any) -> TestServer:
        # The client-facing app (not the admin app, which shares the Proxy object).
        proxy_app = PROXY in app and app[PROXY].lifespan in list(app.cleanup_ctx)
        if not proxy_app:
            return await aiohttp_server(app, **kwargs)
        host = kwargs.pop("host", "127.0.0.1")
        port = kwargs.pop("port", None)
        # "aiohttp" is `listen.fast_path: false` as it ships: the proxy's listener (its
        # timeouts, limits and drain) in front of aiohttp's protocol for every connection.
        server = FastPathServer(app, host=host, port=port, fast_path=front_door == "fast")
        await server.start_server(**kwargs)
        servers.append(server)
        return server

    yield serve
    while servers:
        await servers.pop().close()
