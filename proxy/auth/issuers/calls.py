"""HTTP calls to another OAuth issuer (discovery, JWKS, introspection), with metrics.

Every failure of the issuer — unreachable, timing out, too large an answer — is
`gate.Unavailable` (503 `verification_unavailable`): ours to report, never the caller's
fault and never a reason to let a request through. Redirects are not followed (a JWKS
location is configuration, not something an answer may move).

Every call of one issuer passes that issuer's gate (`gate.CallGate`, as Clerk's calls
pass Clerk's): its Retry-After holds every caller, an outage backs off, and an answer
refusing the proxy's own credentials (401/403: a wrong introspection secret) pauses its
calls for `BAD_CREDENTIALS_RETRY_AFTER` — one call and one log line per pause, not one
per request, which is what gets a client locked out at an identity provider.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Final, get_args

import aiohttp

from proxy.auth.breaker import Held
from proxy.auth.gate import CallGate, Unavailable, call
from proxy.config.model import Issuer
from proxy.core.errors import ProxyError
from proxy.observe.metrics import Metrics

BAD_CREDENTIALS_RETRY_AFTER: Final = 30
# The gate's backoff after failures: Clerk's defaults (clerk.backoff_initial/backoff_max).
BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 10.0
HELD_REASONS: Final[tuple[Held, ...]] = get_args(Held)


class IssuerHttp:
    def __init__(
        self,
        cfg: Issuer,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._session = session
        self._metrics = metrics
        self.gate = CallGate(
            BACKOFF_INITIAL,
            BACKOFF_MAX,
            clock=monotonic,
            refuse=self._refusal,
            credentials_pause=BAD_CREDENTIALS_RETRY_AFTER,
        )
        self._held = {
            reason: metrics.issuer_calls_held.labels(cfg.name, reason) for reason in HELD_REASONS
        }

    def held(self) -> ProxyError | None:
        """The refusal a call would get from the gate right now, else None: lets the
        verifier skip a call (and spending budget on it) while the issuer asked to wait."""
        return self.gate.refusal()

    def _refusal(self, seconds: float, reason: Held) -> Unavailable:
        self._held[reason].inc()
        name = self.cfg.name
        if reason == "retry_after":
            message = f"issuer {name} is rate limiting the proxy; waiting for its Retry-After"
        elif reason == "refused":
            message = "the proxy cannot verify tokens right now"
        else:
            message = f"issuer {name} is failing; its calls are paused and retried with backoff"
        return Unavailable(message, max(1, math.ceil(seconds)))

    async def get(self, endpoint: str, url: str) -> tuple[int, Mapping[str, str], bytes]:
        return await self.call(endpoint, "GET", url)

    async def call(
        self,
        endpoint: str,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body) of one call through the issuer's gate; raises
        Unavailable when there is none (held by the gate, or no answer)."""
        m = self._metrics
        return await self.gate.through(
            lambda: call(
                self._session,
                method,
                url,
                who=f"issuer {self.cfg.name}",
                data=data,
                headers=headers or {},
                seconds=self.cfg.timeout,
                counted=(m.issuer_requests, m.issuer_duration, (self.cfg.name, endpoint)),
            )
        )
