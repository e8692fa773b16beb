"""The cluster's channel: one pub/sub subscription per process, and what arrives on it.

Two kinds of message, on one channel per Clerk instance:
- `L` + a 16-byte cache key: a verification of that token has landed in the shared
  level (cluster single-flight: the processes waiting for it read it now);
- `R` + a revocation's signed text (`revocation.sign`): verified and applied at once.

Messages are taken in batches of at most `BATCH`, and the loop is given back between
batches: a flood on the channel (anyone who can PUBLISH can send one) costs a share of
the loop, never a stall, and revocations that arrive together are applied together (one
pass over the first level for the lot).

The listener reconnects with a growing pause while Redis is away. Every (re)subscription
calls `on_subscribed` first, so revocations published while this process was not
listening are read back from the sorted set that keeps them (`revocation`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from redis.exceptions import RedisError

from proxy.auth.shared.metrics import SharedMetrics

log = logging.getLogger("proxy.shared")

LANDED: Final = b"L"
REVOKED: Final = b"R"
# A landing heard just before its waiter registered still counts for this long.
RECENT_SECONDS: Final = 2.0
_MAX_RECENT: Final = 10_000
_PAUSES: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


# Messages handled before the loop is given back to requests.
BATCH: Final = 100


def landed_message(key: bytes) -> bytes:
    return LANDED + key


def revoked_message(signed: bytes) -> bytes:
    return REVOKED + signed


class Events:
    def __init__(
        self,
        listener: Any,
        channel: str,
        metrics: SharedMetrics,
        *,
        on_subscribed: Callable[[], Awaitable[None]],
        on_revoked: Callable[[list[bytes]], object],
        resync_seconds: float,
        bound: float,
    ) -> None:
        self._resync = resync_seconds
        # How long subscribing or re-reading the revocations may take before it counts
        # as a lost connection (a hung server must not stall the listener for ever).
        self.bound = bound
        self._listener = listener
        self.channel = channel
        self._metrics = metrics
        self._on_subscribed = on_subscribed
        self._on_revoked = on_revoked
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self._recent: dict[bytes, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._metrics.subscribed.set(0)

    async def landed(self, key: bytes, within: float) -> bool:
        """Wait until another process says `key` landed; False after `within` seconds."""
        heard = self._recent.get(key)
        if heard is not None and time.monotonic() - heard < RECENT_SECONDS:
            return True
        future = self._waiters.get(key)
        if future is None:
            future = self._waiters[key] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(future), within)
        except TimeoutError:
            if not future.done() and self._waiters.get(key) is future:
                del self._waiters[key]
            return False
        return True

    def _heard_landed(self, key: bytes) -> None:
        if len(self._recent) >= _MAX_RECENT:
            self._recent.clear()
        self._recent[key] = time.monotonic()
        future = self._waiters.pop(key, None)
        if future is not None and not future.done():
            future.set_result(None)

    def dispatch(self, batch: list[bytes]) -> None:
        """Landings at once; the revocations of the batch together (unverified here)."""
        revoked: list[bytes] = []
        for data in batch:
            if data[:1] == LANDED and len(data) == 17:
                self._heard_landed(data[1:])
            elif data[:1] == REVOKED:
                revoked.append(data[1:])
        if revoked:
            self._on_revoked(revoked)

    async def _run(self) -> None:
        failures = 0
        while True:
            pubsub = self._listener.pubsub()
            try:
                async with asyncio.timeout(self.bound):
                    await pubsub.subscribe(self.channel)
                    await self._on_subscribed()
                self.connected.set()
                self._metrics.subscribed.set(1)
                if failures:
                    log.info("shared cache channel subscribed again")
                failures = 0
                await self._listen(pubsub)
            except (RedisError, OSError, TimeoutError, ValueError, TypeError) as exc:
                # ValueError/TypeError: a reply of a shape no Redis sends; the listener
                # must outlive it (it carries every revocation), so it reconnects.
                if failures == 0:
                    log.warning(
                        "shared cache channel lost; revocations are re-read on reconnect",
                        extra={"kind": type(exc).__name__},
                    )
            finally:
                self.connected.clear()
                self._metrics.subscribed.set(0)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(_PAUSES[min(failures, len(_PAUSES) - 1)])
            failures += 1

    async def _listen(self, pubsub: Any) -> None:
        """Messages as they come; every `resync` seconds the revocations are read again
        (a message lost on the way is then caught up with). Returns only by raising."""
        resync_at = time.monotonic() + self._resync
        while True:
            wait = max(0.0, min(1.0, resync_at - time.monotonic()))
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            batch: list[bytes] = []
            while message is not None:
                if message.get("type") == "message":
                    data = message.get("data")
                    if isinstance(data, bytes):
                        batch.append(data)
                if len(batch) >= BATCH:
                    break
                # What is already buffered, without waiting for more.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            if batch:
                self.dispatch(batch)
                # Buffered messages are read without suspending: give requests their turn.
                await asyncio.sleep(0)
            if time.monotonic() >= resync_at:
                async with asyncio.timeout(self.bound):
                    await self._on_subscribed()
                resync_at = time.monotonic() + self._resync
