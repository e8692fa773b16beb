"""`SharedLevel`: the second level of the verification cache, in Redis/Valkey, with
cluster-wide single-flight. The first level (`cache.store`) asks it inside its own
flight, so one process asks at most once per token at a time.

Every call names the token's key and its **realm** (`config.realms`: a digest of the
config that judges this token here — Clerk's keys, or the issuer's audiences, claims and
introspection client). An entry is found only by a process whose realm is the same: the
realm is folded into the key the level uses for the token, so the entry, its lock, its
MAC and its "landed" message all belong to one realm. Two processes on one Redis that
would judge a token differently — another audience, another issuer behind the same
prefix, the config before a rollout — never adopt each other's verdicts, and never
wait for each other's verifications.

`lookup(key, realm)` is one round trip (a script): the entry when one is there; otherwise
it takes the token's lock if it is free — this process then verifies and `store`s — or
learns that another process is verifying it, and `follow` waits for that one's answer
(its "landed" message, at most `flight_wait`, and less when the caller's deadline leaves
less), then reads it. Without an answer in time, or when Redis fails, this process
verifies on its own: a slow or absent cluster never blocks a request for longer than the
bound. A lookup whose reply was lost (it timed out) may still have taken the lock: its
`store` releases it all the same (only ever its own, by value).

`store(key, realm, entry)` writes what Clerk (or the issuer) said, with the deadlines the first level keeps
(the value expires from Redis at the entry's `keep_until`; nothing extends it later),
releases the lock when it is this process's, and announces the landing. It runs in the
background: the request does not wait for the write.

Keys (`{…}` is a Cluster hash tag: an entry and its lock live on one node):
`<prefix>:<instance>:{<realm key hex>}:e` and `…:l`, where the realm key is
SHA-256(realm + the cache's key), truncated like it. `<instance>` names the Clerk
instance (the first level's scope), so two instances never share entries.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from redis.exceptions import NoScriptError

from proxy.auth.cache.entries import Entry, Negative
from proxy.auth.shared import codec
from proxy.auth.shared.connection import Connection
from proxy.auth.shared.events import Events, landed_message
from proxy.core.background import Background

# GET the entry; else SET the lock if free. Returns {value or false, 1 if locked by us}
# (also when the lock holds our lease already: an earlier FETCH took it, its reply lost).
FETCH: Final = """
local value = redis.call('GET', KEYS[1])
if value then return {value, 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, 1} end
if redis.call('GET', KEYS[2]) == ARGV[1] then return {false, 1} end
return {false, 0}
"""

# SET the entry (when there is one) for its remaining life, DEL the lock when it is
# ours, and announce the landing.
STORE: Final = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


class SharedLevel:
    def __init__(
        self,
        connection: Connection,
        events: Events,
        namespace: str,
        mac: bytes,
        *,
        lock_seconds: float,
        realms: Sequence[bytes],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._conn = connection
        self._events = events
        self._namespace = namespace
        self._mac = mac
        self._now = now
        self._lock_ms = max(1, int(lock_seconds * 1000))
        self._wait = connection.cfg.flight_wait
        self._metrics = connection.metrics
        self._fetch = connection.client.register_script(FETCH)
        self._store = connection.client.register_script(STORE)
        # Locks this process holds: key -> its lock value. A value is this process's
        # random prefix and a counter: unique in the cluster without a getrandom per miss.
        self._leases: dict[bytes, bytes] = {}
        self._lease_prefix = secrets.token_bytes(8)
        self._lease_count = itertools.count()
        self._lock_arg = str(self._lock_ms).encode()
        # The counters a second-level hit moves, bound once (a label lookup is a lock).
        self._hit = self._metrics.lookups.labels("hit")
        self._miss = self._metrics.lookups.labels("miss")
        self._writes = Background()
        # Every realm this process judges in (Clerk's, each issuer's): where a revoked
        # token's entry may be.
        self._realms = tuple(realms)

    def keys(self, key: bytes) -> list[str]:
        """The entry's and the lock's names for a realm key (`in_realm`)."""
        tag = f"{self._namespace}:{{{key.hex()}}}"
        return [tag + ":e", tag + ":l"]

    async def lookup(self, key: bytes, realm: bytes) -> Entry | bool:
        """The shared entry for `key` in `realm`; else False when this process verifies it
        (it took the token's lock, or Redis failed) and then `store`s, True when another
        process of the realm is verifying it (`follow` waits for its answer). One round
        trip; two when a dead value is replaced."""
        key = in_realm(key, realm)
        keys = self.keys(key)
        # Kept until `store` whenever the lock may be ours: the script may have taken it
        # although its reply was lost (timed out, or this caller went away), and `store`
        # releases it then, so that no process waits on a lock nobody will release. A
        # lookup after such a one asks with the same lease, and FETCH knows it as ours.
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = self._lease_prefix + next(self._lease_count).to_bytes(
                8, "big"
            )
        found = await self._conn.call("fetch", lambda c: self._run_fetch(c, keys, lease))
        if found is None:
            self._metrics.lookups.labels("error").inc()
            return False
        value, locked = found
        if value:
            entry = self._read(key, value)
            if entry is not None:
                del self._leases[key]  # an entry was there: the script took no lock
                return entry
            # There, but past its deadline (Redis drops it a moment later) or not ours:
            # replacing it is one process's job, as for a missing one.
            took = await self._conn.call("lock", lambda c: self._run_lock(c, keys[1], lease))
            if took is None:
                self._metrics.lookups.labels("error").inc()
                return False
            locked = took
        self._miss.inc()
        if locked:
            self._metrics.flights.labels("led").inc()
            return False
        del self._leases[key]  # another process holds it
        return True

    async def follow(self, key: bytes, realm: bytes, wait: float) -> Entry | None:
        """Another process is verifying this token: its answer, within `flight_wait` and
        `wait` (what the caller can spare); None when none came (this process then
        verifies and `store`s)."""
        key = in_realm(key, realm)
        await self._events.landed(key, min(self._wait, wait))
        name = self.keys(key)[0]
        value = await self._conn.call("get", lambda c: c.get(name))
        entry = self._read(key, value, count=False) if value else None
        if entry is not None:
            self._metrics.flights.labels("followed").inc()
            return entry
        self._metrics.flights.labels("waited_out").inc()
        return None

    def _read(self, key: bytes, value: Any, *, count: bool = True) -> Entry | None:
        """A usable entry (counted as a hit), or None: expired, only stale, or not ours
        (counted as `garbled`: forged, garbled or of another format — never trusted)."""
        entry = codec.decode(key, value, self._mac)
        if entry is None:
            self._metrics.lookups.labels("garbled").inc()
            return None
        now = self._now()
        if isinstance(entry, Negative):
            if now >= entry.keep_until:
                return None
            if count:
                self._metrics.lookups.labels("negative_hit").inc()
            return entry
        # Past its fresh period an entry is a miss here: the first level keeps its own
        # stale copy for when Clerk is down.
        if now >= entry.fresh_until:
            return None
        if count:
            self._hit.inc()
        return entry

    async def _run_fetch(self, client: Any, keys: list[str], lease: bytes) -> tuple[object, bool]:
        """FETCH by its SHA, as redis-py's `Script` does (loaded again when the server
        lost it: a restart, SCRIPT FLUSH), without that wrapper's per-call argument work.
        Read here, inside the guarded call: a reply of another shape raises, and the call
        counts as failed."""
        script = self._fetch
        try:
            reply = await client.execute_command(
                "EVALSHA", script.sha, 2, keys[0], keys[1], lease, self._lock_arg
            )
        except NoScriptError:
            reply = await script(keys=keys, args=[lease, self._lock_arg], client=client)
        if not isinstance(reply, list) or len(reply) != 2 or reply[1] not in (0, 1):
            raise ValueError("FETCH answered something else than {value or false, 0 or 1}")
        # The value, whatever it is, goes to `_read`, which trusts nothing it cannot verify.
        return reply[0], reply[1] == 1

    async def _run_lock(self, client: Any, name: str, lease: bytes) -> bool:
        """SET NX: whether this process took the lock (a refused SET is nil, not a
        failure: None from `call` means the call failed)."""
        return bool(await client.set(name, lease, nx=True, px=self._lock_ms))

    def store(self, key: bytes, realm: bytes, entry: Entry | None) -> None:
        """Write `entry` (None: nothing to write, e.g. Clerk was down) and release the lock."""
        key = in_realm(key, realm)
        lease = self._leases.pop(key, b"")
        value = b""
        ttl_ms = 0
        if entry is not None:
            ttl_ms = int((entry.keep_until - self._now()) * 1000)
            if ttl_ms > 0:
                value = codec.encode(key, entry, self._mac)
        if not value and not lease:
            return
        keys = self.keys(key)
        args: list[bytes | int | str] = [
            lease,
            value,
            max(ttl_ms, 1),
            self._events.channel,
            landed_message(key),
        ]
        self._background("store", lambda c: self._store(keys=keys, args=args, client=c))

    def forget(self, keys: list[bytes]) -> None:
        """Remove these entries, in every realm of this process (a revocation: the
        processes that hold them in their first level know their keys; the others refuse
        the Principal when they read it)."""
        names = [self.keys(in_realm(key, realm))[0] for key in keys for realm in self._realms]
        if names:
            self._background("forget", lambda c: c.unlink(*names))

    def _background(self, op: str, make: Callable[[Any], Awaitable[Any]]) -> None:
        self._writes.spawn(self._conn.call(op, make))

    async def close(self) -> None:
        await self._writes.wait()


def in_realm(key: bytes, realm: bytes) -> bytes:
    """The key a token has in the shared level within `realm` (a cache key's size)."""
    return hashlib.sha256(realm + key).digest()[: len(key)]


def namespace(prefix: str, scope: bytes) -> str:
    """`<prefix>:<instance id>`: the first level's scope, hashed (it holds the API URL and a
    key id, neither of which belongs in a key name)."""
    return f"{prefix}:{hashlib.sha256(scope).hexdigest()[:16]}"
