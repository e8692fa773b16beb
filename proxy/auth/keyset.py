"""A JSON Web Key Set, fetched and cached the way careful verifiers do it.

Knows nothing of who publishes the set: the owner passes the fetch (Clerk's JWKS goes
through the Clerk client with the instance key, another issuer's is a plain GET).

- The set is kept for the answer's `Cache-Control: max-age`, clamped to
  [`min_refetch`, `max_age`]; without one, for `max_age`. `no-store`/`no-cache` mean
  "as short as we allow", never "fetch on every token".
- A `kid` the set does not hold triggers a refetch at most once per `min_refetch`
  seconds, and concurrent callers share that one fetch: a flood of made-up kids costs
  at most one fetch per interval.
- A set past its time keeps verifying the kids it holds while one refetch runs in the
  background (stale-while-revalidate, as Envoy's `jwt_authn` does): a slow key endpoint
  at the moment the set ages out delays no token signed by a known key. Only a kid the
  held set lacks (or the very first fetch) waits for that refetch — the same one, never a
  second — bounded by the caller's deadline; the fetch itself runs to its end even when
  every waiter gave up, so the next request finds its outcome.
- A failed fetch keeps the last good set in use (an issuer outage must not log every
  partner out); after a failure the next try waits `FAILED_FETCH_BACKOFF` seconds (or
  `min_refetch`, if shorter) so an outage does not queue requests behind timeouts.
- Keys are read as what they are (RSA, EC with its curve, OKP with its curve, and the
  JWK's own `alg` when it names one), so `jws` can refuse a token whose algorithm does
  not fit its key. Keys not meant for signatures, symmetric keys, and kids that appear
  twice in one set (ambiguous) are dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxy.auth.gate import DEFAULT_RETRY_AFTER
from proxy.core.errors import VERIFICATION_UNAVAILABLE, ProxyError

log = logging.getLogger("proxy.keyset")

FAILED_FETCH_BACKOFF: Final = 5.0
# kty → the curves (None: no curve) a key of that type may have.
KEY_TYPES: Final = {"RSA": (None,), "EC": ("P-256", "P-384", "P-521"), "OKP": ("Ed25519", "Ed448")}

# (status, headers, body) of one fetch; raising a 503 ProxyError means "unreachable".
Fetched = tuple[int, Mapping[str, str], bytes]


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own `alg` when it pins one, else the set's default (if any)
    key: Any  # the cryptography public key


def _key(item: Mapping[str, Any], default_alg: str | None) -> Key | None:
    import jwt

    kty, kid = item.get("kty"), item.get("kid")
    if kty not in KEY_TYPES or not isinstance(kid, str) or not kid:
        return None
    if item.get("use", "sig") != "sig":
        return None
    ops = item.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if any(name in item for name in ("d", "p", "q", "k")):
        return None  # a private (or symmetric) key published by mistake is not trusted
    crv = item.get("crv")
    if crv not in KEY_TYPES[kty]:
        return None
    alg = item.get("alg")
    if alg is not None and not isinstance(alg, str):
        return None
    try:
        parsed = jwt.PyJWK(dict(item))
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if not alg and default_alg is not None:
        alg = default_alg
    return Key(kid=kid, kty=kty, crv=crv, alg=alg, key=parsed.key)


def parse_jwks(body: bytes, default_alg: str | None = None) -> dict[str, Key]:
    """The signature keys of a JWKS document, by kid; `default_alg`: the algorithm of a
    key whose JWK pins none (None: any its type fits). Raises ValueError for a
    non-document."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, Key] = {}
    seen: set[str] = set()
    for item in data["keys"]:
        if not isinstance(item, dict):
            continue
        kid = item.get("kid")
        if isinstance(kid, str) and kid in seen:
            keys.pop(kid, None)  # the same kid twice: neither copy can be trusted
            continue
        if isinstance(kid, str):
            seen.add(kid)
        key = _key(item, default_alg)
        if key is not None:
            keys[key.kid] = key
    return keys


_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:[,=]|$)", re.IGNORECASE)


def cache_seconds(headers: Mapping[str, str], low: float, high: float) -> float:
    """How long to keep a set, from its answer's Cache-Control, within [low, high]."""
    value = headers.get("Cache-Control", "")
    if _NO_CACHE.search(value):
        return low
    match = _MAX_AGE.search(value)
    if match is None:
        return high
    return min(high, max(low, float(match.group(1))))


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: Mapping[str, Key]
    fetched_at: float
    fresh_for: float


class KeySetCache:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[Fetched]],
        *,
        name: str,
        max_age: float,
        min_refetch: float,
        default_alg: str | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._fetch_set = fetch
        # Set once on each key as its set is read (`parse_jwks`), not copied per token.
        self._default_alg = default_alg
        self._name = name  # for log lines: whose keys these are
        self._max_age = max_age
        self._min_refetch = min_refetch
        self._now = now
        self._set: KeySet | None = None
        self._last_fetch = float("-inf")
        self._last_ok = False
        self._running: asyncio.Future[None] | None = None  # the one fetch under way

    async def _fetch(self) -> None:
        self._last_fetch = self._now()
        self._last_ok = False
        try:
            status, headers, body = await self._fetch_set()
            if status != 200:
                raise ValueError(f"HTTP {status}")
            keys = parse_jwks(body, self._default_alg)
        except ProxyError as exc:
            # Whatever the owner's fetch refuses with (unreachable, held by its gate), the
            # set is not fetched: the last good one stays, nobody is blamed.
            log.warning("JWKS fetch for %s failed: %s", self._name, exc.message)
            return
        except (ValueError, RecursionError) as exc:
            log.error("JWKS fetch for %s failed: %s", self._name, exc)
            return
        if not keys:
            log.error("JWKS of %s holds no usable signature key; keeping the last set", self._name)
            return
        fresh_for = cache_seconds(headers, self._min_refetch, self._max_age)
        self._set = KeySet(keys, self._now(), fresh_for)
        self._last_ok = True
        log.info("JWKS fetched for %s", self._name, extra={"keys": len(keys)})

    def _due(self, kid: str, now: float) -> bool:
        current, since = self._set, now - self._last_fetch
        if current is None or now - current.fetched_at >= current.fresh_for:
            # After a failed fetch, back off so an outage does not queue every JWT
            # request behind one more fetch that times out.
            return self._last_ok or since >= min(FAILED_FETCH_BACKOFF, self._min_refetch)
        return kid not in current.keys and since >= self._min_refetch

    def _start(self) -> asyncio.Future[None]:
        running = self._running
        if running is None:
            running = self._running = asyncio.ensure_future(self._fetch())
            running.add_done_callback(self._finished)
        return running

    def _finished(self, done: asyncio.Future[None]) -> None:
        self._running = None
        if not done.cancelled() and done.exception() is not None:
            log.error("JWKS fetch for %s failed", self._name, exc_info=done.exception())

    async def refresh(self) -> None:
        """Fetch the set now (at start-up, on a reload), joining a fetch under way."""
        await asyncio.shield(self._start())

    async def settled(self) -> None:
        """Once the fetch under way (if any) has ended: a background refetch has no caller
        to wait for it, a test or a shutdown may."""
        running = self._running
        if running is not None:
            await asyncio.shield(running)

    def held(self, kid: str) -> Key | None:
        """The key for `kid` when the set holds it, at once (a set past its freshness starts
        its refetch in the background: the held key answers now); None: `key` decides."""
        current = self._set
        if current is None:
            return None
        known = current.keys.get(kid)
        if known is not None:
            now = self._now()
            if now - current.fetched_at >= current.fresh_for and self._due(kid, now):
                self._start()
        return known

    async def key(self, kid: str) -> Key | None:
        """The key for `kid`, fetching as the rules above allow; None when the set has no
        such key. Raises 503 `verification_unavailable` when no set could be fetched yet."""
        known = self.held(kid)
        if known is not None:
            return known
        now = self._now()
        running = self._running
        if running is None and self._due(kid, now):
            running = self._start()
        if running is not None:
            # Shielded: a waiter that gives up (its deadline) must not cancel the fetch
            # every other waiter, and the next request, rely on.
            await asyncio.shield(running)
        if self._set is None:
            raise ProxyError(
                VERIFICATION_UNAVAILABLE,
                f"cannot fetch {self._name}'s signing keys",
                retry_after=DEFAULT_RETRY_AFTER,
            )
        return self._set.keys.get(kid)
