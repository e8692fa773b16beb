"""Tasks that run beside the request path (a write-behind, a key fetch, a connect, a
reload), each held until it is done.

The loop keeps only weak references to tasks (asyncio's documentation of `create_task`):
one that nothing else holds may be collected before it finishes, and a connect or a
reload would then just stop. Every fire-and-forget task of the proxy goes through a
`Background`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    """A set of running tasks, each dropped from it when it ends."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def wait(self) -> None:
        """Until every task now running has ended (their errors are theirs to log)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
