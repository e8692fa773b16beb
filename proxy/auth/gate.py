"""`CallGate`: when the proxy may call a remote API again after it failed or throttled us.

Being a good citizen towards Clerk and every other issuer during its outage or rate
limiting is what this is for (one gate per API: Clerk's client, each issuer's calls —
discovery, keys and introspection alike): a 429's `Retry-After` is honoured for every
caller, not just the one that got it; 5xx answers, timeouts and lost connections back off
exponentially with jitter; an answer refusing *our* credentials pauses until an operator
can have fixed them (identity providers lock out clients that keep trying); and once a
pause is over, one call (the probe) finds out whether the API is back while every other
caller is still refused without a call. So an outage, a throttle or a wrong secret costs
at most one call per pause, however many requests are waiting.

`CallGate` is pure state (the clock and the random source are passed in); `through`
runs one call under it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Literal

from proxy.core.errors import ProxyError

# On top of a Retry-After, never below it: pods that were told the same time spread out.
RETRY_AFTER_JITTER: Final = 0.1
# The Retry-After we send when the API gave none: long enough not to hammer, short
# enough to recover.
DEFAULT_RETRY_AFTER: Final = 2

Held = Literal["retry_after", "backoff", "probe", "refused"]
# (status, headers, body) of one HTTP call.
Answer = tuple[int, Mapping[str, str], bytes]


def retry_after(headers: Mapping[str, str], default: int = DEFAULT_RETRY_AFTER) -> int:
    """The API's Retry-After (delta-seconds, within 1 s to an hour) to pass on to our
    caller; anything else is `default`."""
    value = headers.get("Retry-After", "").strip()
    if value.isdigit():
        return max(1, min(int(value), 3600))
    return default


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The API's Retry-After in seconds for the gate, None when it sent none we can read."""
    value = headers.get("Retry-After", "").strip()
    return float(min(int(value), 3600)) if value.isdigit() else None


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

    def refused(self, now: float, pause: float) -> float:
        """The API refused our own credentials: nothing changes until an operator fixes
        them, so no call for `pause` seconds, then one probe."""
        if now >= self._until or self._probing:
            self._failures += 1
        return self._close(now, pause, "refused")

    def settle(self, now: float, status: int, retry_after: float | None) -> None:
        """An answer: 429 throttles, 5xx fails, anything else (a refusal of the token
        included) means the API works."""
        if status == 429:
            self.throttled(now, retry_after)
        elif status >= 500:
            self.failed(now, retry_after)
        else:
            self.succeeded()

    async def through(
        self,
        clock: Callable[[], float],
        call: Callable[[], Awaitable[Answer]],
        held: Callable[[float, Held], ProxyError],
        refusal_pause: Callable[[int], float | None],
    ) -> Answer:
        """One call under the gate: while it is closed, `held(seconds, reason)` is raised
        without a call; a ProxyError from `call` (unreachable, timed out) is a failure;
        an answer settles the gate, or closes it for `refusal_pause(status)` seconds when
        that says the status refuses our credentials."""
        waiting = self.enter(clock())
        if waiting is not None:
            raise held(*waiting)
        probe = self._failures > 0
        try:
            answer = await call()
        except ProxyError:
            self.failed(clock())
            raise
        except BaseException:
            if probe:
                self.abandoned()  # cancelled: another call may find out instead
            raise
        status, headers, _ = answer
        pause = refusal_pause(status)
        if pause is not None:
            self.refused(clock(), pause)
        else:
            self.settle(clock(), status, retry_after_seconds(headers))
        return answer

    def abandoned(self) -> None:
        """The probe went away without an answer (cancelled): let another call probe."""
        self._probing = False

    def _close(self, now: float, pause: float, reason: Held) -> float:
        if now + pause > self._until:
            self._until = now + pause
            self._reason = reason
        self._probing = False
        return self._until - now
