"""How long a client connection may take for each thing it does: one policy for both
doors (the fast path and aiohttp's), pure — times in, a verdict out.

A `ConnectionClock` follows one connection through its phases and says when it has
overstayed, and why (the reason is a metric label):

- idle: between exchanges (or connected and silent), at most `idle_timeout`;
- head: from the first byte of a request head to its end, at most `head_timeout`;
- body: while the proxy waits for request-body bytes, a budget of `body_grace` seconds
  that the waiting spends and every byte refills by 1/`min_body_rate` s, never above
  `body_grace` (Apache's mod_reqtimeout `body=20,MinRate=500` in one number). So a body
  must average `min_body_rate` after the grace, a fast start cannot buy a long stall,
  and time the proxy spends pushing a chunk to a slow upstream is never the client's;
- upgraded (WebSocket): no frame either way for `websocket_idle_timeout` (pings and
  pongs count);
- busy (the answer is being fetched or sent): the upstream's timeouts apply, not these.

While draining, an idle connection is due at once. Times are `time.monotonic()` seconds
(the listeners pass a clock they read once per sweep).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

IDLE: Final = 0
HEAD: Final = 1
BUSY: Final = 2
BODY: Final = 3  # waiting for the client's body bytes
UPGRADED: Final = 4
CLOSED: Final = 5  # expired once: being closed, never judged again

# Why a connection was closed: the label values of authproxy_connections_closed_total.
IDLE_TIMEOUT: Final = "idle"
HEAD_TIMEOUT: Final = "head_timeout"
BODY_RATE: Final = "body_rate"
WEBSOCKET_IDLE: Final = "websocket_idle"
PER_ADDRESS_LIMIT: Final = "per_address_limit"
CEILING: Final = "ceiling"  # refused at accept: the process's client connections are full
DRAIN_IDLE: Final = "drain_idle"
DRAIN_DEADLINE: Final = "drain_deadline"

# What a client connection costs in descriptors: the client's socket and, while it is
# relayed (a WebSocket, a long poll, a request) or pooled after, one to the upstream.
DESCRIPTORS_PER_CONNECTION: Final = 2


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """The `connections:` config section. A timeout of 0 is off; so is a rate of 0."""

    idle_timeout: float = 75.0
    head_timeout: float = 30.0
    body_grace: float = 20.0
    min_body_rate: int = 500  # bytes per second
    websocket_idle_timeout: float = 3600.0
    max_per_address: int = 0  # concurrent connections per client address; 0: no limit
    # Client connections the process holds at most (every listener's, forward-auth's
    # too); 0: as many as the descriptors left after the reserve allow.
    max_client_connections: int = 0
    # Descriptors kept from client connections for everything else the process opens:
    # listeners, admin scrapes and probes, Clerk's and issuers' pool (32), Redis (64),
    # the refusals themselves (each costs one for a moment) and the interpreter's own.
    descriptor_reserve: int = 256

    def client_ceiling(self, descriptors: int) -> int:
        """How many client connections the process may hold under a soft RLIMIT_NOFILE
        of `descriptors`: two each from what the reserve leaves, or fewer if configured
        (never more: past it, accept() fails for the admin port and Clerk as well)."""
        budget = max(0, descriptors - self.descriptor_reserve) // DESCRIPTORS_PER_CONNECTION
        wanted = self.max_client_connections
        return min(wanted, budget) if wanted else budget

    def tick(self) -> float:
        """How often a listener should look: often enough that a connection is closed
        within a quarter of its shortest timeout (at most once a second)."""
        timeouts = [
            t
            for t in (
                self.idle_timeout,
                self.head_timeout,
                self.body_grace,
                self.websocket_idle_timeout,
            )
            if t > 0
        ]
        return max(0.05, min([1.0, *(t / 4 for t in timeouts)]))


class ConnectionClock:
    """One connection's phase and the time it started; `expired` is the verdict."""

    __slots__ = ("budget", "closer", "cut", "phase", "policy", "since")

    def __init__(self, policy: ConnectionPolicy, now: float) -> None:
        self.policy = policy
        self.phase = IDLE
        self.since = now
        # Seconds the client may still spend before its next body bytes.
        self.budget = policy.body_grace
        # Set by a WebSocket relay: closes the socket with a close frame, not a reset.
        self.closer: Callable[[str], None] | None = None
        # Set when the drain's deadline cuts the connection: an exchange it ends was
        # ended by the proxy (503), not by a client that went away (499).
        self.cut = False

    def received(self, now: float) -> None:
        """Bytes arrived from the client."""
        if self.phase == IDLE:
            self.phase, self.since = HEAD, now
        elif self.phase == UPGRADED:
            self.since = now

    def head_done(self, now: float) -> None:
        """A whole head was read; the exchange is the upstream's business now."""
        self.phase, self.since = BUSY, now
        self.budget = self.policy.body_grace

    def busy(self) -> None:
        """`head_done` without the time (the fast path's: busy is never timed, and it
        takes no body)."""
        self.phase = BUSY

    def body_wait(self, now: float) -> None:
        """The proxy waits for body bytes from the client."""
        self.phase, self.since = BODY, now

    def body_chunk(self, size: int, now: float) -> None:
        """`size` body bytes arrived; the proxy now pushes them upstream (not timed)."""
        rate = self.policy.min_body_rate
        if self.phase == BODY:
            refill = size / rate if rate > 0 else 0.0
            grace = self.policy.body_grace
            self.budget = min(grace, self.budget - (now - self.since) + refill)
        self.phase, self.since = BUSY, now

    def answered(self, now: float) -> None:
        """The exchange is over; the connection waits for the next request (unless it
        was upgraded: the byte relay's handler answers at once, the socket lives on)."""
        if self.phase != UPGRADED:
            self.phase, self.since = IDLE, now

    def upgraded(self, now: float, closer: Callable[[str], None] | None = None) -> None:
        self.phase, self.since = UPGRADED, now
        self.closer = closer

    def frame(self, now: float) -> None:
        """A WebSocket frame went either way."""
        self.since = now

    def closed(self) -> None:
        """The connection is being closed (its verdict is in)."""
        self.phase = CLOSED

    def expired(self, now: float, *, draining: bool = False) -> str | None:
        """Why the connection must be closed now, or None (always None once `closed`)."""
        policy, phase, elapsed = self.policy, self.phase, now - self.since
        if phase == IDLE:
            if draining:
                return DRAIN_IDLE
            if 0 < policy.idle_timeout < elapsed:
                return IDLE_TIMEOUT
        elif phase == HEAD and 0 < policy.head_timeout < elapsed:
            return HEAD_TIMEOUT
        elif phase == BODY and policy.min_body_rate > 0 and policy.body_grace > 0:
            if elapsed > self.budget:
                return BODY_RATE
        elif phase == UPGRADED and 0 < policy.websocket_idle_timeout < elapsed:
            return WEBSOCKET_IDLE
        return None

    def answerable(self) -> bool:
        """Whether nothing has been answered on the exchange in progress, so the client
        may be told why it is closed (408) instead of just losing the connection."""
        return self.phase in (HEAD, BODY)


def clock_of(transport: object) -> ConnectionClock | None:
    """The clock of the connection a request came on (`request.transport`), when one of
    the proxy's listeners holds it: its protocol carries it. aiohttp's own servers (tests)
    do not."""
    get_protocol = getattr(transport, "get_protocol", None)
    if get_protocol is None:
        return None
    clock = getattr(get_protocol(), "clock", None)
    return clock if isinstance(clock, ConnectionClock) else None
