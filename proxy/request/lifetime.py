"""Resource lifetimes for `web.Application.cleanup_ctx`, which takes async generators.

The request path's modules are compiled by mypyc (setup.py), and mypyc compiles no async
generator: the one generator that pairs a start-up with its clean-up lives here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable


async def paired(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> AsyncIterator[None]:
    """`start()`, then the app's life, then `stop()`. A `start()` that fails must clean
    up after itself: `stop()` runs only after one that succeeded."""
    await start()
    try:
        yield
    finally:
        await stop()
