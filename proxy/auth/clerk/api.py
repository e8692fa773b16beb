"""The Clerk Backend API client for the three opaque-token verify endpoints.

Response parsing is pure (`parse_verify_response`, `classify_failure`) and tested by
feeding status/body; `ClerkClient` only adds the HTTP call, one retry and metrics.

The mapping of failures is the point of this module: a token Clerk does not know or
refuses is the caller's problem (401, negative-cacheable), while Clerk being down,
slow, rate-limited or refusing *our* key is ours (503 `verification_unavailable`,
never cached, never blamed on the caller).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from proxy.auth.breaker import Held
from proxy.auth.claims_json import loads, numeric_date
from proxy.auth.gate import CallGate, Unavailable, call, retry_after
from proxy.auth.tokens import TokenKind
from proxy.config import model as config
from proxy.core.errors import (
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    VERIFICATION_NOT_ENABLED,
    VERIFICATION_UNAVAILABLE,
    ProxyError,
)
from proxy.core.principal import Principal, PrincipalType, TokenType, encode_claims
from proxy.observe.metrics import Metrics

log = logging.getLogger("proxy.clerk")

_ID: Final = re.compile(r"[a-z]+_[A-Za-z0-9]{1,128}")
# A failure right after good answers is retried once when the gate's first pause (about
# backoff_initial) is at most this long.
QUICK_RETRY = 0.5
BAD_KEY_RETRY_AFTER = 30
# An instance setting changes when an operator changes it, not in seconds.
SETTING_RETRY_AFTER = 60
_CLERK_CODE = re.compile(r"[a-z0-9_]{1,64}")

INSTANCE_SCOPED: Final = (
    "Clerk does not know this token; tokens are scoped to one Clerk instance, so a token "
    "issued by another instance or environment (e.g. development vs production) is unknown here"
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the metrics label
    path: str
    body_field: str
    principal_type: PrincipalType
    token_type: TokenType


M2M: Final = Endpoint("m2m_verify", "/m2m_tokens/verify", "token", "machine", "m2m_token")
OAUTH: Final = Endpoint(
    "oauth_verify",
    "/oauth_applications/access_tokens/verify",
    "access_token",
    "oauth",
    "oauth_token",
)
API_KEY: Final = Endpoint("api_key_verify", "/api_keys/verify", "secret", "api_key", "api_key")
ENDPOINTS: Final[dict[TokenKind, Endpoint]] = {
    TokenKind.M2M: M2M,
    TokenKind.OAUTH: OAUTH,
    TokenKind.API_KEY: API_KEY,
}


def error_code(body: bytes) -> str:
    """The first Clerk error code of an error body, for logs and a metric label: Clerk's
    codes are snake_case words, anything else is "unknown" (never the token)."""
    try:
        errors = json.loads(body).get("errors")
        code = errors[0].get("code")
    except (ValueError, RecursionError, AttributeError, IndexError, TypeError, KeyError):
        return "unknown"
    return code if isinstance(code, str) and _CLERK_CODE.fullmatch(code) else "unknown"


class ClerkSettingRefusal(ProxyError):
    """503 `verification_not_enabled`: Clerk understood the call and refuses it because of
    how the instance is set up (422, e.g. `api_keys_not_enabled`). No caller can fix it
    and no retry will: the operator has to change the instance's settings."""

    def __init__(self, endpoint: Endpoint, clerk_code: str) -> None:
        super().__init__(
            VERIFICATION_NOT_ENABLED,
            f"this Clerk instance does not verify {endpoint.token_type} tokens "
            f"(Clerk: {clerk_code}); the proxy's operator has to enable them in Clerk",
            retry_after=SETTING_RETRY_AFTER,
            token_type=endpoint.token_type,
        )
        self.clerk_code = clerk_code


def classify_failure(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], body: bytes
) -> ProxyError:
    """The refusal for a non-200 answer. Returned (not raised) so the caller decides on retries."""
    if status == 404:
        return ProxyError(TOKEN_INVALID, INSTANCE_SCOPED, token_type=endpoint.token_type)
    if status == 422:
        return ClerkSettingRefusal(endpoint, error_code(body))
    if status == 400:
        return ProxyError(
            TOKEN_INVALID, "Clerk rejected this token", token_type=endpoint.token_type
        )
    if status in (401, 403):
        log.error(
            "Clerk refused the proxy's own secret key (HTTP %d, %s) on %s: check clerk.secret_key "
            "and clerk.machine_secret_key; every verification fails until this is fixed",
            status,
            error_code(body),
            endpoint.name,
        )
        return Unavailable("the proxy cannot verify tokens right now", BAD_KEY_RETRY_AFTER)
    if status == 429:
        return Unavailable("Clerk is rate limiting verification", retry_after(headers))
    return Unavailable(f"Clerk answered HTTP {status}", retry_after(headers))


def _ms(value: Any, name: str) -> float | None:
    try:
        return numeric_date(value, per_second=1000)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None


def parse_verify_response(endpoint: Endpoint, body: bytes, now: float) -> Principal:
    """A 200 answer → Principal, or a rejection. A 200 that says revoked/expired, or whose
    expiration is past, is a rejection; a 200 we cannot read is Clerk's fault (503)."""
    try:
        data = loads(body)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        if data.get("active") is False:
            # The OAuth verify answer for a JWT access token that is no longer active:
            # the spec says "not active (expired)".
            raise ProxyError(TOKEN_EXPIRED, "the token has expired", token_type=endpoint.token_type)
        token_id, subject = data.get("id"), data.get("subject")
        if not isinstance(token_id, str) or not isinstance(subject, str) or not subject:
            raise ValueError("id/subject missing")
        scopes = data.get("scopes") or []
        if isinstance(scopes, str):
            scopes = scopes.split()
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError("scopes is not a list of strings")
        expires_at = _ms(data.get("expiration"), "expiration")
        claims = data.get("claims")
        if claims is not None and not isinstance(claims, dict):
            raise ValueError("claims is not an object")
        client_id = data.get("client_id") if endpoint is OAUTH else None
        if client_id is not None and not isinstance(client_id, str):
            raise ValueError("client_id is not a string")
        revoked, expired = data.get("revoked", False), data.get("expired", False)
        if not isinstance(revoked, bool) or not isinstance(expired, bool):
            raise ValueError("revoked/expired are not booleans")
    except (ValueError, RecursionError) as exc:
        log.error("unreadable 200 answer from Clerk %s: %s", endpoint.name, exc)
        raise Unavailable("Clerk gave an unreadable answer") from None
    if revoked:
        raise ProxyError(
            TOKEN_INVALID, "the token has been revoked", token_type=endpoint.token_type
        )
    if expired or (expires_at is not None and expires_at <= now):
        raise ProxyError(TOKEN_EXPIRED, "the token has expired", token_type=endpoint.token_type)
    principal = Principal(
        type=endpoint.principal_type,
        id=subject,
        token_type=endpoint.token_type,
        token_id=token_id,
        scopes=frozenset(scopes),
        claims_json=encode_claims(claims),
        expires_at=expires_at,
        client_id=client_id or None,
    )
    if not principal.header_safe():
        log.error(
            "unreadable 200 answer from Clerk %s: ids or scopes not header-safe", endpoint.name
        )
        raise Unavailable("Clerk gave an unreadable answer")
    return principal


class ClerkClient:
    def __init__(
        self,
        cfg: config.Clerk,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._session = session
        self._metrics = metrics
        self._now = now
        self._monotonic = monotonic
        # One per Clerk instance (this client): its pauses hold every verify call.
        self.gate = CallGate(
            cfg.backoff_initial, cfg.backoff_max, clock=monotonic, refuse=self._refusal
        )
        self._held = {
            reason: metrics.clerk_calls_held.labels(reason)
            for reason in ("retry_after", "backoff", "probe")
        }

    def headers(self, key: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Clerk-API-Version": self._cfg.api_version,
        }

    async def get(self, name: str, path: str) -> tuple[int, Mapping[str, str], bytes]:
        """One GET with the instance key (JWKS), with metrics, through the gate the verify
        calls pass (the same API: an outage or a throttle holds both); raises
        Unavailable."""
        return await self.gate.through(
            lambda: self._call(name, "GET", path, self._cfg.secret_key, None)
        )

    def held(self) -> ProxyError | None:
        """The refusal a verify call would get from the gate right now, else None. Lets the
        verifier skip a call (and spending budget on it) while Clerk asked us to wait."""
        return self.gate.refusal()

    async def verify(self, kind: TokenKind, token: str) -> Principal:
        """One verification, through the gate: refused without a call while Clerk's
        Retry-After or our backoff runs; a lone failure is retried once, as the probe."""
        endpoint = ENDPOINTS[kind]
        key = self._cfg.secret_key
        if kind is TokenKind.M2M and self._cfg.machine_secret_key:
            key = self._cfg.machine_secret_key
        payload = json.dumps({endpoint.body_field: token}).encode()
        gate = self.gate
        failure: ProxyError | None = None
        for attempt in (1, 2):
            refusal = gate.refusal()
            if refusal is not None:
                refusal.token_type = endpoint.token_type
                raise refusal if failure is None else failure
            try:
                # Not held just now, nor by the time `through` asks (no await between).
                status, headers, body = await gate.through(
                    lambda: self._call(endpoint.name, "POST", endpoint.path, key, payload)
                )
            except Unavailable as exc:
                failure = exc
            else:
                if status == 200:
                    return parse_verify_response(endpoint, body, self._now())
                failure = classify_failure(endpoint, status, headers, body)
                if status < 500:
                    break  # a refusal of the token, or a 429: no quick retry
            # A lone failure after good answers is retried once, when the first pause is
            # short; in an outage the pauses grow and only the probe calls.
            wait = gate.held(self._monotonic())
            if attempt == 2 or gate.failures != 1 or (wait is not None and wait[0] > QUICK_RETRY):
                break
            if wait is not None:
                await asyncio.sleep(wait[0])
        assert failure is not None
        if failure.code == VERIFICATION_UNAVAILABLE:
            log.warning("Clerk %s unavailable: %s", endpoint.name, failure.message)
        elif isinstance(failure, ClerkSettingRefusal):
            log.error(
                "Clerk refuses %s verification because of an instance setting (HTTP 422, %s): "
                "enable it for this instance in Clerk, or stop routing these tokens here",
                endpoint.token_type,
                failure.clerk_code,
            )
            self._metrics.clerk_setting_refusals.labels(endpoint.name, failure.clerk_code).inc()
        failure.token_type = endpoint.token_type
        raise failure

    async def revoke(self, token_id: str, reason: str) -> dict[str, Any]:
        """Revoke an M2M token (`mt_…`) or an API key (`ak_…`) at Clerk, by id:
        `POST /m2m_tokens/{id}/revoke` (with the machine secret key when one is
        configured) or `POST /api_keys/{id}/revoke`. What happened, for the operator."""
        if not _ID.fullmatch(token_id):
            return {"status": "refused", "message": "not a Clerk id"}
        if token_id.startswith("mt_"):
            name, path = "m2m_revoke", f"/m2m_tokens/{token_id}/revoke"
            key = self._cfg.machine_secret_key or self._cfg.secret_key
        elif token_id.startswith("ak_"):
            name, path, key = "api_key_revoke", f"/api_keys/{token_id}/revoke", self._cfg.secret_key
        else:
            return {
                "status": "refused",
                "message": "Clerk revokes M2M tokens (mt_…) and API keys (ak_…) by id; "
                "OAuth and session tokens are revoked in Clerk's dashboard or API",
            }
        payload = json.dumps({"revocation_reason": reason or None}).encode()
        try:
            status, _, body = await self._call(name, "POST", path, key, payload)
        except Unavailable as exc:
            return {"status": "failed", "message": exc.message}
        if status == 200:
            return {"status": "revoked", "http_status": status}
        return {
            "status": "failed",
            "http_status": status,
            "message": f"Clerk answered HTTP {status} ({error_code(body)})",
        }

    def _refusal(self, seconds: float, reason: Held) -> Unavailable:
        self._held[reason].inc()
        message = (
            "Clerk is rate limiting verification; waiting for its Retry-After"
            if reason == "retry_after"
            else "Clerk is failing; verification is paused and retried with backoff"
        )
        return Unavailable(message, max(1, math.ceil(seconds)))

    async def _call(
        self, name: str, method: str, path: str, key: str, payload: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        return await call(
            self._session,
            method,
            self._cfg.api_url + path,
            who="Clerk",
            data=payload,
            headers=self.headers(key),
            seconds=self._cfg.timeout,
            counted=(self._metrics.clerk_requests, self._metrics.clerk_duration, (name,)),
        )
