"""`CallGate`: when the proxy may call a remote API again after it failed or throttled us.

Being a good citizen towards Clerk during its outage or rate limiting is what this is
for: a 429's `Retry-After` is honoured for every caller, not just the one that got it;
5xx answers, timeouts and lost connections back off exponentially with jitter; and once
a pause is over, one call (the probe) finds out whether the API is back while every
other caller is still refused without a call. So an outage or a throttle costs at most
one call per pause, however many requests are waiting.

Pure state: the clock and the random source are passed in, nothing here does I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final, Literal

# On top of a Retry-After, never below it: pods that were told the same time spread out.
RETRY_AFTER_JITTER: Final = 0.1

Held = Literal["retry_after", "backoff", "probe"]


class CallGate:
    """Open (calls go), closed until a time (calls refused), or half-open (one probe)."""

    __slots__ = (
        "_failures",
        "_initial",
        "_maximum",
        "_probing",
        "_random",
        "_reason",
        "_until",
    )

    def __init__(
        self, initial: float, maximum: float, *, rng: Callable[[], float] = random.random
    ) -> None:
        self._initial = initial
        self._maximum = maximum
        self._random = rng
        self._failures = 0
        self._until = 0.0
        self._probing = False
        self._reason: Held = "backoff"

    @property
    def failures(self) -> int:
        """Consecutive failed calls (0: the API answered the last one)."""
        return self._failures

    def held(self, now: float) -> tuple[float, Held] | None:
        """Why and for how many more seconds a call may not go now; None when it may."""
        if now < self._until:
            return self._until - now, self._reason
        if self._probing:
            # Half-open and the probe not back yet: its answer decides for everyone.
            return self._initial, "probe"
        return None

    def enter(self, now: float) -> tuple[float, Held] | None:
        """`held`, and when the call may go, take the gate for it: after a failure that
        call is the one probe."""
        held = self.held(now)
        if held is None and self._failures > 0:
            self._probing = True
        return held

    def succeeded(self) -> None:
        """The API answered (any answer but 429 or 5xx): open for everyone."""
        self._failures = 0
        self._until = 0.0
        self._probing = False

    def failed(self, now: float, retry_after: float | None = None) -> float:
        """A 5xx, a timeout or no connection: pause for the next backoff step (Clerk's
        Retry-After, when it sent one, as the floor). Returns the pause left.

        Calls that were already out when the gate closed fail together: they do not
        count as more consecutive failures (a burst must not jump the backoff to its cap)."""
        if now >= self._until or self._probing:
            self._failures += 1
        step = min(self._maximum, self._initial * 2.0 ** (self._failures - 1))
        pause = step * (0.5 + 0.5 * self._random())  # equal jitter
        reason: Held = "backoff"
        if retry_after is not None and retry_after >= pause:
            pause = retry_after * (1.0 + RETRY_AFTER_JITTER * self._random())
            reason = "retry_after"
        return self._close(now, pause, reason)

    def throttled(self, now: float, retry_after: float | None) -> float:
        """A 429: no call before its Retry-After passes (a backoff step without one)."""
        return self.failed(now, retry_after if retry_after is not None else 0.0)

    def abandoned(self) -> None:
        """The probe went away without an answer (cancelled): let another call probe."""
        self._probing = False

    def _close(self, now: float, pause: float, reason: Held) -> float:
        if now + pause > self._until:
            self._until = now + pause
            self._reason = reason
        self._probing = False
        return self._until - now
