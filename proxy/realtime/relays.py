"""What every relay of an app shares: the open relays (`WebSocketRegistry`, closed with
1001 on shutdown, and the grants of CONNECTs that came over polling) and what a relay is
given (`RelayContext`). Its own module so that both relays (`websocket`'s framing relay
and `splice`'s byte relay) and their helpers (`namespaces`, `polling`) import it without
importing each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiohttp

from proxy.config import model as config
from proxy.core import principal
from proxy.observe import metrics
from proxy.realtime.socketio import GrantBook

GOING_AWAY: Final = 1001
# A reconnect wave's upgrades reach the upstream this many at a time: the rest wait their
# turn instead of all completing (and all running their Python) in the same turn of the
# loop, which is what stalls it for every other request.
HANDSHAKES: Final = 64


class Relay(Protocol):
    async def close(self, code: int, reason: str) -> None: ...


class WebSocketRegistry:
    """Open relays (closed with 1001 on shutdown) and the grants of CONNECTs that came
    over polling, for the WebSocket each session upgrades to."""

    def __init__(self, grants: GrantBook | None = None) -> None:
        self._links: set[Relay] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.grants = grants if grants is not None else GrantBook()
        self.handshakes = asyncio.Semaphore(HANDSHAKES)

    def __len__(self) -> int:
        return len(self._links)

    def track(self, link: Relay) -> None:
        self._links.add(link)
        self._idle.clear()

    def untrack(self, link: Relay) -> None:
        self._links.discard(link)
        if not self._links:
            self._idle.set()

    async def close_all(self, code: int = GOING_AWAY, reason: str = "proxy shutting down") -> None:
        await asyncio.gather(*(link.close(code, reason) for link in list(self._links)))

    async def drain(self, grace: float) -> None:
        """Give open sockets `grace` seconds to end on their own, then close the rest
        with 1001 (clients reconnect, through another pod)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        await self.close_all()


@dataclass(frozen=True, slots=True)
class RelayContext:
    session: aiohttp.ClientSession
    settings: config.WebSocket
    metrics: metrics.Metrics
    verifier: principal.Verifier
    prefix: str
    # Keep one registry per app across config reloads: it is what shutdown closes.
    registry: WebSocketRegistry = field(default_factory=WebSocketRegistry)
    # Re-verify a live socket's token this often (the cache TTL); 0: only at expiry.
    reverify_seconds: float = 0.0
    clock: Callable[[], float] = time.time
