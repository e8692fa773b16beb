"""`Breaker`: when a remote service may be called again after it failed — the one circuit
breaker, for Clerk and each issuer (through `gate.CallGate`) and for Redis.

Closed: calls go. After `threshold` failed calls in a row, open: no call for a pause — an
exponential backoff step from `initial` up to `maximum` with equal jitter, a Retry-After
as its floor, or the pause a refusal of our credentials asks. Once the pause is over,
half-open: one call (the probe) finds out whether the service is back while every other
caller is still refused without a call; its success closes the breaker, its failure opens
it for the next step. So an outage costs at most one call per pause, however many requests
are waiting.

Pure state: the caller reports outcomes with the time; the random source is injected.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final, Literal

State = Literal["closed", "open", "half_open"]
Held = Literal["retry_after", "backoff", "probe", "refused"]

# On top of a Retry-After, never below it: pods that were told the same time spread out.
RETRY_AFTER_JITTER: Final = 0.1


def no_jitter() -> float:
    """The random source of a breaker whose pauses are exact (the top of each range)."""
    return 1.0


class Breaker:
    __slots__ = (
        "_failures",
        "_initial",
        "_maximum",
        "_probing",
        "_random",
        "_reason",
        "_threshold",
        "_until",
    )

    def __init__(
        self,
        initial: float,
        maximum: float | None = None,
        *,
        threshold: int = 1,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._initial = initial
        self._maximum = initial if maximum is None else maximum
        self._threshold = threshold
        self._random = rng
        self._failures = 0
        self._until = 0.0
        self._probing = False
        self._reason: Held = "backoff"

    @property
    def failures(self) -> int:
        """Consecutive failed calls (0: the service answered the last one)."""
        return self._failures

    def state(self, now: float) -> State:
        if self._failures < self._threshold:
            return "closed"
        return "open" if now < self._until and not self._probing else "half_open"

    def held(self, now: float) -> tuple[float, Held] | None:
        """Why and for how many more seconds a call may not go now; None when it may."""
        if now < self._until:
            return self._until - now, self._reason
        if self._probing:
            # Half-open and the probe not back yet: its answer decides for everyone.
            return self._initial, "probe"
        return None

    def enter(self, now: float) -> tuple[float, Held] | None:
        """`held`, and when the call may go, take the breaker for it: once open, that call
        is the one probe."""
        held = self.held(now)
        if held is None and self._failures >= self._threshold:
            self._probing = True
        return held

    def succeeded(self) -> None:
        self._failures = 0
        self._until = 0.0
        self._probing = False

    def abandoned(self) -> None:
        """The probe went away without an answer (cancelled): let another call probe."""
        self._probing = False

    def failed(self, now: float, retry_after: float | None = None) -> float:
        """A failed call: once `threshold` are in a row, pause for the next backoff step
        (a Retry-After, when the service sent one, as the floor). Returns the pause left.

        Calls that were already out when the breaker opened fail together: they do not
        count as more consecutive failures (a burst must not jump the backoff to its cap)."""
        self._count(now)
        if self._failures < self._threshold:
            return 0.0
        step = min(self._maximum, self._initial * 2.0 ** (self._failures - self._threshold))
        pause = step * (0.5 + 0.5 * self._random())  # equal jitter
        reason: Held = "backoff"
        if retry_after is not None and retry_after >= pause:
            pause = retry_after * (1.0 + RETRY_AFTER_JITTER * self._random())
            reason = "retry_after"
        return self._open(now, pause, reason)

    def refused(self, now: float, pause: float) -> float:
        """The service refused our own credentials: nothing changes until an operator
        fixes them, so no call for `pause` seconds, then one probe."""
        self._count(now)
        self._failures = max(self._failures, self._threshold)
        return self._open(now, pause, "refused")

    def _count(self, now: float) -> None:
        if now >= self._until or self._probing:
            self._failures += 1

    def _open(self, now: float, pause: float, reason: Held) -> float:
        if now + pause > self._until:
            self._until = now + pause
            self._reason = reason
        self._probing = False
        return self._until - now
