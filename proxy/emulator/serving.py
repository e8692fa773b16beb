"""An emulator's app on a socket: started (port 0 picks a free one), and served until
SIGINT/SIGTERM with one JSON line saying what a user needs (URL, seeded tokens)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Running(Generic[E]):
    emulator: E
    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(emulator: E, app: web.Application, host: str, port: int) -> Running[E]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1]  # the real port when 0 was asked for
    return Running(emulator, runner, f"http://{host}:{bound}")


def run_until_signal(
    serve: Callable[[], Awaitable[Running[E]]], seed: Callable[[Running[E]], dict[str, Any]]
) -> None:
    """Blocking: `serve`, print `seed`'s answer as one JSON line, serve until SIGINT/SIGTERM."""

    async def forever() -> None:
        running = await serve()
        print(json.dumps(seed(running)), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await running.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(forever())
    sys.stdout.flush()
