"""`CallGate`: the breaker (`breaker.Breaker`) in front of one HTTP API — Clerk's client, each
issuer's calls (discovery, keys and introspection alike) — reading its answers.

Being a good citizen towards Clerk and every other issuer during its outage or rate
limiting is what this is for: a 429's `Retry-After` is honoured for every caller, not
just the one that got it; 5xx answers, timeouts and lost connections back off
exponentially with jitter; an answer refusing *our* credentials pauses until an operator
can have fixed them (identity providers lock out clients that keep trying); and once a
pause is over, one call (the probe) finds out whether the API is back. So an outage, a
throttle or a wrong secret costs at most one call per pause, however many requests are
waiting. `through` runs one call under it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from proxy.auth.breaker import Breaker, Held
from proxy.core.errors import ProxyError

# The Retry-After we send when the API gave none: long enough not to hammer, short
# enough to recover.
DEFAULT_RETRY_AFTER: Final = 2

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


class CallGate(Breaker):
    """The breaker of one API, with the clock it reads, the refusal a held call raises
    (`refuse(seconds, reason)`) and, when a 401/403 refuses our credentials rather than a
    token (an issuer's introspection), how long that pauses the calls."""

    __slots__ = ("_clock", "_credentials_pause", "_refuse")

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        clock: Callable[[], float],
        refuse: Callable[[float, Held], ProxyError],
        credentials_pause: float | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(initial, maximum, rng=rng)
        self._clock = clock
        self._refuse = refuse
        self._credentials_pause = credentials_pause

    def refusal(self) -> ProxyError | None:
        """The refusal a call would get right now, else None: lets a caller skip a call
        (and spending budget on it) while the API asked us to wait."""
        waiting = self.held(self._clock())
        return None if waiting is None else self._refuse(*waiting)

    def throttled(self, now: float, retry_after: float | None) -> float:
        """A 429: no call before its Retry-After passes (a backoff step without one)."""
        return self.failed(now, retry_after if retry_after is not None else 0.0)

    def settle(self, now: float, status: int, retry_after: float | None) -> None:
        """An answer: 429 throttles, 5xx fails, anything else (a refusal of the token
        included) means the API works."""
        if status == 429:
            self.throttled(now, retry_after)
        elif status >= 500:
            self.failed(now, retry_after)
        else:
            self.succeeded()

    async def through(self, call: Callable[[], Awaitable[Answer]]) -> Answer:
        """One call under the gate: while it holds calls, its refusal is raised without a
        call; a ProxyError from `call` (unreachable, timed out) is a failure; an answer
        settles the gate, or pauses it when it refuses our credentials."""
        waiting = self.enter(self._clock())
        if waiting is not None:
            raise self._refuse(*waiting)
        probe = self._probing
        try:
            answer = await call()
        except ProxyError:
            self.failed(self._clock())
            raise
        except BaseException:
            if probe:
                self.abandoned()  # cancelled: another call may find out instead
            raise
        status, headers, _ = answer
        if self._credentials_pause is not None and status in (401, 403):
            self.refused(self._clock(), self._credentials_pause)
        else:
            self.settle(self._clock(), status, retry_after_seconds(headers))
        return answer
