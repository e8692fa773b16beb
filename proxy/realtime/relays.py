"""What every relay of an app shares: the open relays (`WebSocketRegistry`, closed with
1001 on shutdown, and the grants of CONNECTs that came over polling) and what a relay is
given (`RelayContext`). Its own module so that both relays (`websocket`'s framing relay
and `splice`'s byte relay) and their helpers (`namespaces`, `polling`) import it without
importing each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiohttp

from proxy.config import model as config
from proxy.core import principal
from proxy.observe import metrics
from proxy.realtime.socketio import GrantBook

# Close codes (RFC 6455 §7.4.1) that both relays send.
GOING_AWAY: Final = 1001
UNSUPPORTED_DATA: Final = 1003
POLICY_VIOLATION: Final = 1008
# Close codes that must never be put on the wire (RFC 6455 §7.4.1) and what to say instead.
UNSENDABLE: Final = {0: 1000, 1005: 1000, 1006: GOING_AWAY, 1015: GOING_AWAY}
# A reconnect wave's upgrades reach the upstream this many at a time: the rest wait their
# turn instead of all completing (and all running their Python) in the same turn of the
# loop, which is what stalls it for every other request. Measured at 5,000 (issue 29,
# docs/performance.md): 16 in flight connected at 77 % of the direct rate, 48 at 90 %,
# with the same stalls (p99 17-32 ms); 256 held more memory per socket at 1,000.
HANDSHAKES: Final = 48
# How late a socket's re-verification or expiry may run: its moment rounded up to this.
GRAIN: Final = 0.25


class Relay(Protocol):
    async def close(self, code: int, reason: str) -> None: ...


class Due(Protocol):
    def due(self) -> None: ...


class Rechecks:
    """When open sockets must look at their grants again (re-verification, expiry): one
    loop timer for all of them, not one per socket. Moments are rounded up to `GRAIN`
    (never early, at most that late); each slot is the set of sockets due in it."""

    def __init__(self) -> None:
        self._slots: dict[int, set[Due]] = {}
        self._order: list[int] = []  # a heap of slot numbers (some emptied since)
        self._timer: asyncio.TimerHandle | None = None
        self._armed = -1  # the slot the timer is set for

    def add(self, item: Due, delay: float) -> int:
        """`item.due()` in `delay` seconds or up to `GRAIN` later; its slot, to `remove`."""
        loop = asyncio.get_running_loop()
        slot = math.ceil((loop.time() + max(0.0, delay)) / GRAIN)
        members = self._slots.get(slot)
        if members is None:
            self._slots[slot] = members = set()
            heapq.heappush(self._order, slot)
        members.add(item)
        if self._timer is None or slot < self._armed:
            self._arm(loop, slot)
        return slot

    def remove(self, item: Due, slot: int) -> None:
        members = self._slots.get(slot)
        if members is not None:
            members.discard(item)
            if not members:
                del self._slots[slot]  # its heap entry is skipped when reached

    def _arm(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = slot
        self._timer = loop.call_at(slot * GRAIN, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = math.floor(loop.time() / GRAIN)
        order, slots = self._order, self._slots
        due: list[Due] = []
        while order and order[0] <= now:
            members = slots.pop(heapq.heappop(order), None)
            if members:
                due.extend(members)
        while order and order[0] not in slots:
            heapq.heappop(order)
        if order:
            self._arm(loop, order[0])
        for item in due:
            item.due()


class WebSocketRegistry:
    """Open relays (closed with 1001 on shutdown) and the grants of CONNECTs that came
    over polling, for the WebSocket each session upgrades to."""

    def __init__(self, grants: GrantBook | None = None) -> None:
        self._links: set[Relay] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.grants = grants if grants is not None else GrantBook()
        self.handshakes = asyncio.Semaphore(HANDSHAKES)
        self.rechecks = Rechecks()

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
class Caller:
    """Who a relayed request comes from: the principal its own headers earned, the
    client's address (re-verifications are counted against it), the bearer token of its
    headers and, when that token was refused on an `optional` route, the spec code of why
    (a CONNECT without a token of its own carries them to the upstream)."""

    principal: principal.Principal
    ip: str
    token: str | None = None
    refusal: str | None = None


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
