"""The connection to Redis/Valkey: a redis-py asyncio client from `cache.shared`, and
`Connection.call`, which bounds every call on the request path and never raises.

Every call made for a request runs under `asyncio.timeout(cache.shared.timeout)` (a few
ms) and the breaker: a slow, hung or absent server costs a miss at most that much, and
after `breaker_failures` in a row nothing until the breaker's probe succeeds. A failure
is a metric and None — the caller goes on to Clerk; it never becomes the request's error.
That holds for whatever the server says: a reply no Redis would give (`+OK` to `HELLO 3`,
a script answering with an integer or a short array — something else listening on the
port, or a proxy in between) makes redis-py, or the caller's own reading of the reply
(done inside `make`), raise anything at all; it is a failure of kind `reply`.
redis-py drops a connection whose call was cut off, so a late answer cannot be read as
the next call's. It retries a failed call once, at once, on a fresh connection (within
the same bound): a pooled connection to a server that restarted fails on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.auth.breaker import Breaker, no_jitter
from proxy.auth.shared.metrics import SharedMetrics
from proxy.config.model import SharedCache

log = logging.getLogger("proxy.shared")

T = TypeVar("T")
Client = Redis | RedisCluster

MAX_CONNECTIONS = 64


def _common(cfg: SharedCache, *, bounded: bool) -> dict[str, Any]:
    """`bounded`: every call on this client runs under an `asyncio.timeout` of ours
    (`call`, `admin`, the listener's resync), so redis-py's own per-read timeout would
    only repeat it — a timer and a `wait_for` on each command of a second-level hit."""
    kwargs: dict[str, Any] = {
        "username": cfg.username or None,
        "password": cfg.password or None,
        "socket_connect_timeout": cfg.connect_timeout,
        "socket_timeout": None if bounded else max(cfg.connect_timeout, cfg.timeout),
        # One immediate retry on a new connection: a pooled connection whose server went
        # away fails at once on its next use, and that is no reason to skip Redis (the
        # request bound still holds: the retry runs inside it).
        "retry": Retry(NoBackoff(), 1),
        "client_name": "clerk-auth-proxy",
    }
    if cfg.target.tls:
        kwargs.update(
            ssl=True,
            ssl_ca_certs=cfg.ca_file or None,
            ssl_certfile=cfg.cert_file or None,
            ssl_keyfile=cfg.key_file or None,
            ssl_cert_reqs="required",
        )
    return kwargs


def connect(cfg: SharedCache) -> tuple[Client, Redis]:
    """(the client for commands, a client for pub/sub). Connects lazily: no I/O here."""
    target = cfg.target
    common = _common(cfg, bounded=True)
    listening = _common(cfg, bounded=False)
    if target.kind == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
            max_connections=MAX_CONNECTIONS,
            **common,
        )
        # Classic PUBLISH reaches every node of a cluster: one node is enough to listen on.
        host, port = target.hosts[0]
        return cluster, Redis(host=host, port=port, **listening)
    if target.kind == "sentinel":
        sentinel_kwargs = {k: v for k, v in listening.items() if k != "client_name"}
        sentinel = Sentinel(
            list(target.hosts),
            sentinel_kwargs=sentinel_kwargs,
            db=target.db,
            max_connections=MAX_CONNECTIONS,
            **common,
        )
        primary = sentinel.master_for(target.service, db=target.db, **common)
        return primary, sentinel.master_for(target.service, db=target.db, **listening)
    host, port = target.hosts[0]
    client = Redis(host=host, port=port, db=target.db, max_connections=MAX_CONNECTIONS, **common)
    return client, Redis(host=host, port=port, db=target.db, **listening)


class Connection:
    def __init__(
        self,
        cfg: SharedCache,
        metrics: SharedMetrics,
        *,
        clients: tuple[Client, Redis] | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.client, self.listener = clients if clients is not None else connect(cfg)
        self.metrics = metrics
        self._now = now
        # `breaker_seconds` each time, neither growing nor jittered: without Redis a pod
        # still verifies on its own, so there is no load to spread by backing off.
        self.breaker = Breaker(cfg.breaker_seconds, threshold=cfg.breaker_failures, rng=no_jitter)
        metrics.watch_breaker(lambda: self.breaker.state(now()) != "closed")
        self._timeout = cfg.timeout
        # Bound once per operation: a label lookup per call is a lock and a tuple.
        self._latency: dict[str, Any] = {}
        self._quiet_until = 0.0

    async def call(self, op: str, make: Callable[[Client], Awaitable[T]]) -> T | None:
        """`make(client)` within the request bound, or None (counted) when Redis failed."""
        if self.breaker.enter(self._now()) is not None:
            self.metrics.errors.labels(op, "breaker_open").inc()
            return None
        started = time.perf_counter()
        kind = "connection"
        try:
            async with asyncio.timeout(self._timeout):
                result = await make(self.client)
        except TimeoutError:
            kind = "timeout"
        except (RedisError, OSError) as exc:
            kind = "timeout" if "Timeout" in type(exc).__name__ else "connection"
        except Exception as exc:
            kind = "reply"
            self._unexpected(op, exc)
        except BaseException:
            # Cancelled (shutdown): a probe must not leave the breaker waiting for it.
            self.breaker.failed(self._now())
            raise
        else:
            self.breaker.succeeded()
            latency = self._latency.get(op)
            if latency is None:
                latency = self._latency[op] = self.metrics.latency.labels(op)
            latency.observe(time.perf_counter() - started)
            return result
        now = self._now()
        was_closed = self.breaker.state(now) == "closed"
        self.breaker.failed(now)
        self.metrics.errors.labels(op, kind).inc()
        if was_closed and self.breaker.state(now) != "closed":
            log.warning(
                "shared cache unreachable; using the first level and the per-pod budget",
                extra={"op": op, "kind": kind, "retry_in": self.cfg.breaker_seconds},
            )
        return None

    def _unexpected(self, op: str, exc: Exception) -> None:
        """Say so, at most once per `breaker_seconds`: the type only (a reply's text may
        hold anything)."""
        now = time.monotonic()
        if now < self._quiet_until:
            return
        self._quiet_until = now + self.cfg.breaker_seconds
        log.warning(
            "the shared cache gave a reply Redis would not give; treated as a failed call",
            extra={"op": op, "error": type(exc).__name__},
        )

    async def admin(self, make: Callable[[Client], Awaitable[T]]) -> T:
        """An operator's call (revocation): the connect timeout, not the request bound, and
        no breaker — it raises a `RedisError` (or `OSError`, `TimeoutError`), and the
        operator is told."""
        try:
            async with asyncio.timeout(self.cfg.connect_timeout + 1.0):
                return await make(self.client)
        except (RedisError, OSError):
            raise
        except Exception as exc:
            raise RedisError(
                f"unexpected reply from the shared cache ({type(exc).__name__})"
            ) from None

    async def close(self) -> None:
        for client in (self.client, self.listener):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
