"""HTTP calls to another OAuth issuer (discovery, JWKS, introspection), with metrics.

Every failure of the issuer — unreachable, timing out, too large an answer — is
`IssuerUnavailable` (503 `verification_unavailable`): ours to report, never the caller's
fault and never a reason to let a request through. Redirects are not followed (a JWKS
location is configuration, not something an answer may move).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiohttp

from proxy.auth.capped import read_capped
from proxy.config.model import Issuer
from proxy.core.errors import VERIFICATION_UNAVAILABLE, ProxyError
from proxy.observe.metrics import Metrics

MAX_ANSWER_BYTES = 256 * 1024
DEFAULT_RETRY_AFTER = 2


class IssuerUnavailable(ProxyError):
    def __init__(self, message: str, retry_after: int = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(VERIFICATION_UNAVAILABLE, message, retry_after=retry_after)


def retry_after(headers: Mapping[str, str]) -> int:
    value = headers.get("Retry-After", "").strip()
    return max(1, min(int(value), 3600)) if value.isdigit() else DEFAULT_RETRY_AFTER


class IssuerHttp:
    def __init__(self, cfg: Issuer, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self.cfg = cfg
        self._session = session
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout)

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
        """(status, headers, body) of one call; raises IssuerUnavailable when there is none."""
        name = self.cfg.name
        started = time.perf_counter()
        status = "error"
        sent = {
            "Accept": "application/json",
            "Accept-Encoding": "identity",  # the shared session does not decompress
            "User-Agent": "clerk-auth-proxy",
            **(headers or {}),
        }
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers=sent,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = str(resp.status)
                body = await read_capped(resp.content, MAX_ANSWER_BYTES)
                if body is None:
                    raise IssuerUnavailable(f"issuer {name}'s {endpoint} answer is too large")
                return resp.status, resp.headers, body
        except TimeoutError:
            status = "timeout"
            raise IssuerUnavailable(f"issuer {name} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise IssuerUnavailable(f"cannot reach issuer {name} ({type(exc).__name__})") from None
        finally:
            self._metrics.issuer_requests.labels(name, endpoint, status).inc()
            self._metrics.issuer_duration.labels(name, endpoint).observe(
                time.perf_counter() - started
            )
