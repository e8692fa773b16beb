"""One load in flight per key, and how callers wait on one.

`Flights` is the table: a flight leaves it when it ends, unless another has taken its
place by then (a placeholder replaced by the load it relays). `within` is a caller's
wait with a deadline that never cancels the flight; `relay` ends a placeholder as the
flight that replaced it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.core.principal import Principal

Flight = asyncio.Future[Principal]


class Flights:
    def __init__(self) -> None:
        self._by_key: dict[bytes, Flight] = {}

    def get(self, key: bytes) -> Flight | None:
        return self._by_key.get(key)

    def __contains__(self, key: bytes) -> bool:
        return key in self._by_key

    def add(self, key: bytes, flight: Flight) -> None:
        """`flight` is now the one for `key` (replacing any other in the table)."""
        self._by_key[key] = flight
        flight.add_done_callback(self._ended(key))

    def settle(self, key: bytes, flight: Flight, outcome: Principal | BaseException) -> None:
        """End `flight` (a placeholder) with `outcome` and take it out of the table at once:
        the next miss starts afresh instead of finding it done."""
        if self._by_key.get(key) is flight:
            del self._by_key[key]
        if isinstance(outcome, BaseException):
            flight.set_exception(outcome)
        else:
            flight.set_result(outcome)

    def _ended(self, key: bytes) -> Callable[[Flight], None]:
        def done(flight: Flight) -> None:
            if self._by_key.get(key) is flight:
                del self._by_key[key]
            if not flight.cancelled():
                flight.exception()  # retrieved: every waiter may have gone away

        return done

    async def idle(self) -> None:
        """Wait until no flight is out (failures are the flights' waiters' business)."""
        while self._by_key:
            await asyncio.gather(*self._by_key.values(), return_exceptions=True)

    async def close(self) -> None:
        flights = list(self._by_key.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)


def relay(flight: Flight, pending: Flight) -> None:
    """`pending` ends as `flight` does."""

    def done(ended: Flight) -> None:
        if pending.done():
            return
        if ended.cancelled():
            pending.cancel()
        elif (error := ended.exception()) is not None:
            pending.set_exception(error)
        else:
            pending.set_result(ended.result())

    flight.add_done_callback(done)


async def within(flight: Flight, deadline: float) -> bool:
    """Whether `flight` ended within `deadline` seconds. Neither the deadline nor this
    caller's cancellation cancels the flight. What `asyncio.wait` does for one future,
    without its sets and its list of callbacks: every miss waits here."""
    if flight.done():
        return True
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = waiter.get_loop().call_later(deadline, wake)
    flight.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        flight.remove_done_callback(wake)
    return flight.done()
