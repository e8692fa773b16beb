"""`CallGate`: the breaker (`breaker.Breaker`) in front of one HTTP API — Clerk's client, each
issuer's calls (discovery, keys and introspection alike) — reading its answers.

Being a good citizen towards Clerk and every other issuer during its outage or rate
limiting is what this is for: a 429's `Retry-After` is honoured for every caller, not
just the one that got it; 5xx answers, timeouts and lost connections back off
exponentially with jitter; an answer refusing *our* credentials pauses until an operator
can have fixed them (identity providers lock out clients that keep trying); and once a
pause is over, one call (the probe) finds out whether the API is back. So an outage, a
throttle or a wrong secret costs at most one call per pause, however many requests are
waiting. `through` runs one call under it; `call` is that call, where every failure to
get an answer — unreachable, timing out, too large an answer (read with a cap rather than
buffered whole) — is `Unavailable`: ours to report, never the caller's fault.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import aiohttp
from prometheus_client import Counter, Histogram

from proxy.auth.breaker import Breaker, Held
from proxy.core.errors import VERIFICATION_UNAVAILABLE, ProxyError

# The Retry-After we send when the API gave none: long enough not to hammer, short
# enough to recover.
DEFAULT_RETRY_AFTER: Final = 2
MAX_ANSWER_BYTES: Final = 256 * 1024

# (status, headers, body) of one HTTP call.
Answer = tuple[int, Mapping[str, str], bytes]


class Unavailable(ProxyError):
    """503 `verification_unavailable`: Clerk's or an issuer's failure, or ours; never the
    caller's."""

    def __init__(self, message: str, retry_after: int = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(VERIFICATION_UNAVAILABLE, message, retry_after=retry_after)


async def read_capped(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    who: str,
    data: bytes | None,
    headers: Mapping[str, str],
    seconds: float,
    counted: tuple[Counter, Histogram, tuple[str, ...]],
) -> Answer:
    """One call to `who` (Clerk, an issuer) within `seconds`, redirects not followed;
    `counted`: the requests counter and latency histogram, and the labels before the status."""
    requests, duration, labels = counted
    started = time.perf_counter()
    status = "error"
    sent = {
        "Accept": "application/json",
        "Accept-Encoding": "identity",  # the shared session does not decompress
        "User-Agent": "clerk-auth-proxy",
        **headers,
    }
    try:
        async with session.request(
            method,
            url,
            data=data,
            headers=sent,
            timeout=aiohttp.ClientTimeout(total=seconds),
            allow_redirects=False,
        ) as resp:
            status = str(resp.status)
            body = await read_capped(resp.content, MAX_ANSWER_BYTES)
            if body is None:
                raise Unavailable(f"{who}'s answer was too large")
            return resp.status, resp.headers, body
    except TimeoutError:
        status = "timeout"
        raise Unavailable(f"{who} did not answer in time") from None
    except aiohttp.ClientError as exc:
        raise Unavailable(f"cannot reach {who} ({type(exc).__name__})") from None
    finally:
        requests.labels(*labels, status).inc()
        duration.labels(*labels).observe(time.perf_counter() - started)


def retry_after(headers: Mapping[str, str], default: int = DEFAULT_RETRY_AFTER) -> int:
    """The API's Retry-After (delta-seconds, within 1 s to an hour) to pass on to our
    caller; anything else is `default`."""
    seconds = retry_after_seconds(headers)
    return default if seconds is None else max(1, int(seconds))


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
