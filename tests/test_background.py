"""Fire-and-forget tasks are held until done (`core.background.Background`): the loop keeps
only weak references to tasks, so one awaiting something only it holds is collected
mid-flight. Shown here first without a holder, then for the holder and for the
listener's connects (`fastpath.listener.Acceptor`), under asyncio and uvloop."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from proxy.core.background import Background
from proxy.fastpath.listener import Acceptor

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def _run(loop_name: str, main: Callable[[], Any]) -> None:
    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


async def _orphaned() -> None:
    # A future only this coroutine's frame holds: nothing but a holder keeps the task.
    await asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_an_unheld_task_is_collected_mid_flight(loop_name: str) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(_orphaned())
        await asyncio.sleep(0)  # it runs to its await
        gone = weakref.ref(task)
        del task
        gc.collect()
        assert gone() is None

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_held_task_runs_until_done(loop_name: str) -> None:
    async def main() -> None:
        held = Background()
        ended = asyncio.get_running_loop().create_future()

        results: list[str] = []

        async def step() -> None:
            await _wait_for(ended)
            results.append("done")

        ref = weakref.ref(held.spawn(step()))
        held.spawn(_orphaned())
        await asyncio.sleep(0)
        gc.collect()
        assert ref() is not None and len(held) == 2
        ended.set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert results == ["done"]
        assert len(held) == 1 and ref() is None  # a finished task leaves the set
        held.cancel()
        await held.wait()
        assert len(held) == 0

    _run(loop_name, main)


async def _wait_for(future: asyncio.Future[None]) -> None:
    await future


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_the_listener_holds_its_connects(loop_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect in flight is the acceptor's to hold: if nothing held it, a connect whose
    transport was not yet made would be collected, its socket left open and never served."""

    async def main() -> None:
        started: list[weakref.ref[asyncio.Task[Any]]] = []

        async def connect(self: Acceptor, conn: socket.socket) -> None:
            task = asyncio.current_task()
            assert task is not None
            started.append(weakref.ref(task))
            try:
                await _orphaned()
            finally:
                conn.close()

        monkeypatch.setattr(Acceptor, "_connect", connect)
        listening = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listening.getsockname()[:2], timeout=10)
        acceptor = Acceptor(listening, asyncio.Protocol)
        try:
            for _ in range(100):
                if acceptor.accept():
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)
            gc.collect()
            assert len(started) == 1 and started[0]() is not None
        finally:
            for ref in started:
                task = ref()
                if task is not None:
                    task.cancel()
            await asyncio.sleep(0)
            acceptor.close()
            client.close()

    _run(loop_name, main)
