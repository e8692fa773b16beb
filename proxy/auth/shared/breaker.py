"""A circuit breaker for the shared level: after `failures` failed calls in a row, no call
for `open_seconds`; then one probe call decides (success closes, failure reopens).

Why: a Redis that hangs costs every miss its full timeout; once it has failed a few
times in a row, skipping it costs nothing and the request goes on to Clerk at once.
No I/O: the caller reports outcomes, the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Literal

State = Literal["closed", "open", "half_open"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


class Breaker:
    __slots__ = ("_failures", "_now", "_open_seconds", "_opened_at", "_probing", "_threshold")

    def __init__(
        self,
        failures: int,
        open_seconds: float,
        *,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if open_seconds <= 0:
            raise ValueError("open_seconds must be positive")
        self._threshold = failures
        self._open_seconds = open_seconds
        self._now = now
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return CLOSED
        if self._probing or self._now() >= self._opened_at + self._open_seconds:
            return HALF_OPEN
        return OPEN

    def allow(self) -> bool:
        """Whether a call may go out now. While half open only one (the probe) does."""
        if self._opened_at is None:
            return True
        if self._probing or self._now() < self._opened_at + self._open_seconds:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            self._opened_at = self._now()
            self._probing = False
