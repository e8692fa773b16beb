"""`SharedBudget`: the cost guard's buckets in Redis, so the configured rates hold for the
whole cluster rather than for each process.

One script takes a token from the global bucket and the client address's bucket, or
from neither (the same rule as the per-pod guard: a refusal spends nothing), timed by
the Redis server's clock so that the pods' clocks do not matter. When Redis is away
(error, timeout, breaker open) the per-pod `VerificationBudget` decides: the floor.

Keys share one hash tag (a script's keys must live on one Cluster node); the client
address is hashed, like every other key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Final

from proxy.auth.budget import exceeded
from proxy.auth.shared.connection import Connection
from proxy.config.model import VerificationBudget

# KEYS: global bucket, client bucket. ARGV: global rate, burst, client rate, burst.
# A bucket is a hash {t: tokens, u: last update in ms}; it expires once it would be full.
# Returns {0, 0} when allowed, else {wait ms, 1 (global) or 2 (client)}.
SPEND: Final = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local levels = {}
for i = 1, 2 do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local b = redis.call('HMGET', KEYS[i], 't', 'u')
  local tokens, updated = tonumber(b[1]), tonumber(b[2])
  if tokens == nil or updated == nil then tokens, updated = burst, now end
  if now > updated then
    tokens = math.min(burst, tokens + (now - updated) * rate / 1000)
    updated = now
  end
  if tokens < 1 then return {math.ceil((1 - tokens) * 1000 / rate), i} end
  levels[i] = {tokens, updated, rate, burst}
end
for i = 1, 2 do
  local l = levels[i]
  redis.call('HSET', KEYS[i], 't', tostring(l[1] - 1), 'u', l[2])
  redis.call('PEXPIRE', KEYS[i], math.ceil(l[4] * 1000 / l[3]) + 1000)
end
return {0, 0}
"""

_SCOPES: Final = {1: "global", 2: "per_ip"}


class SharedBudget:
    def __init__(
        self,
        connection: Connection,
        namespace: str,
        cfg: VerificationBudget,
        on_refused: Callable[[str], None],
    ) -> None:
        self._conn = connection
        self._cfg = cfg
        self._tag = f"{namespace}:{{budget}}"
        self._spend = connection.client.register_script(SPEND)
        self._metrics = connection.metrics
        self._on_refused = on_refused
        g, ip = cfg.global_, cfg.per_ip
        self._args = [g.rate, g.burst, ip.rate, ip.burst]

    async def acquire(self, client_ip: str, fallback: Callable[[str], None]) -> None:
        """Spend one verification cluster-wide, or raise 429 `verification_budget_exceeded`;
        `fallback(client_ip)` (the per-pod guard) decides when Redis cannot."""
        if not self._cfg.enabled:
            return
        ip_id = hashlib.sha256(client_ip.encode()).hexdigest()[:16]
        keys = [self._tag + ":global", self._tag + ":ip:" + ip_id]
        answer = await self._conn.call("budget", lambda c: self._run_spend(c, keys))
        if answer is None:
            self._metrics.budget.labels("fallback").inc()
            fallback(client_ip)
            return
        wait_ms, scope = answer
        if wait_ms <= 0:
            self._metrics.budget.labels("allowed").inc()
            return
        self._metrics.budget.labels("refused").inc()
        name = _SCOPES[scope]
        self._on_refused(name)
        raise exceeded(wait_ms / 1000)

    async def _run_spend(self, client: Any, keys: list[str]) -> tuple[int, int]:
        """SPEND, read inside the guarded call: a reply of another shape raises there, and
        the per-pod guard decides (`Connection.call`)."""
        reply = await self._spend(keys=keys, args=self._args, client=client)
        if isinstance(reply, list) and len(reply) == 2 and all(type(n) is int for n in reply):
            wait_ms, scope = reply
            if (wait_ms == 0 and scope == 0) or (wait_ms > 0 and scope in _SCOPES):
                return wait_ms, scope
        raise ValueError("SPEND answered something else than {0, 0} or {wait ms, 1 or 2}")
