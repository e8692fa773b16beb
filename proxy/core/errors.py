"""The refusals the proxy answers itself, exactly as SPEC.md "Errors" fixes them."""

from __future__ import annotations

import json
import logging
from typing import Final

import aiohttp
from aiohttp import web

log = logging.getLogger("proxy")

TOKEN_MISSING: Final = "token_missing"
TOKEN_ID_NOT_SECRET: Final = "token_id_not_secret"
TOKEN_INVALID: Final = "token_invalid"
TOKEN_EXPIRED: Final = "token_expired"
# A JWT whose Clerk class signals (sub prefix, header cat and typ) disagree.
TOKEN_TYPE_MISMATCH: Final = "token_type_mismatch"
INSUFFICIENT_SCOPE: Final = "insufficient_scope"
BAD_REQUEST: Final = "bad_request"
VERIFICATION_UNAVAILABLE: Final = "verification_unavailable"
# Clerk refuses to verify a kind of token because of an instance setting (its 422).
VERIFICATION_NOT_ENABLED: Final = "verification_not_enabled"
VERIFICATION_BUDGET_EXCEEDED: Final = "verification_budget_exceeded"
UPSTREAM_UNAVAILABLE: Final = "upstream_unavailable"
UPSTREAM_TIMEOUT: Final = "upstream_timeout"
PAYLOAD_TOO_LARGE: Final = "payload_too_large"
HTTP_VERSION_NOT_SUPPORTED: Final = "http_version_not_supported"
# POST /revoke on the control listener (docs/spec.md "Control listener").
REVOCATION_DISABLED: Final = "revocation_disabled"
REVOCATION_UNAVAILABLE: Final = "revocation_unavailable"
CLERK_REVOKE_FAILED: Final = "clerk_revoke_failed"
# A valid token of an issuer the route does not accept (routes[].issuers).
ISSUER_NOT_ALLOWED: Final = "issuer_not_allowed"
REQUEST_TIMEOUT: Final = "request_timeout"
TOO_MANY_CONNECTIONS: Final = "too_many_connections"
# A failure of the proxy's own (a bug), answered by either door's last resort.
INTERNAL_ERROR: Final = "internal_error"

STATUS: Final[dict[str, int]] = {
    TOKEN_MISSING: 401,
    TOKEN_ID_NOT_SECRET: 401,
    TOKEN_INVALID: 401,
    TOKEN_EXPIRED: 401,
    TOKEN_TYPE_MISMATCH: 401,
    INSUFFICIENT_SCOPE: 403,
    BAD_REQUEST: 400,
    VERIFICATION_UNAVAILABLE: 503,
    VERIFICATION_NOT_ENABLED: 503,
    VERIFICATION_BUDGET_EXCEEDED: 429,
    UPSTREAM_UNAVAILABLE: 502,
    UPSTREAM_TIMEOUT: 504,
    PAYLOAD_TOO_LARGE: 413,
    HTTP_VERSION_NOT_SUPPORTED: 505,
    REVOCATION_DISABLED: 404,
    REVOCATION_UNAVAILABLE: 503,
    CLERK_REVOKE_FAILED: 502,
    ISSUER_NOT_ALLOWED: 403,
    REQUEST_TIMEOUT: 408,
    TOO_MANY_CONNECTIONS: 503,
    INTERNAL_ERROR: 500,
}


def _quote(value: str) -> str:
    # RFC 6750 auth-param values are quoted-strings; keep them ASCII and unbreakable.
    cleaned = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in value)
    return cleaned.replace("\\", "\\\\").replace('"', '\\"')


class ProxyError(Exception):
    """A refusal with its spec code. `message` is shown to the client: never put a token in it."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        scope: str | None = None,
        status: int | None = None,
        token_type: str | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS[code]
        self.retry_after = retry_after
        self.scope = scope
        # Which kind of token was refused (for the decisions metric), when known.
        self.token_type = token_type
        # For an upstream failure, what went wrong (UPSTREAM_CAUSES): the access line's
        # `cause`, never shown to the client.
        self.cause = cause

    @property
    def ends_connection(self) -> bool:
        """On the client-facing doors, a malformed request (400) or a version not spoken
        (505) ends its connection with the answer, as nginx's do: what follows such a
        request cannot be trusted to be the next request (a body read another way, a
        smuggled head), so it is not read. Refusals of well-formed requests (401, 403,
        404, 429...) keep it open, and so does the forward-auth listener, whose asker's
        own framing was read fine (a 400 there is about the request it describes)."""
        return self.status == 400 or self.status == 505

    @property
    def is_auth_failure(self) -> bool:
        """True when the caller's credentials were judged bad (as opposed to us failing)."""
        return self.status == 401

    def body(self) -> bytes:
        return json.dumps(
            {"error": {"code": self.code, "message": self.message}},
            separators=(",", ":"),
        ).encode()

    def response(self) -> web.Response:
        """This refusal as aiohttp answers it (the fast path writes `body` and `headers`
        itself)."""
        return web.Response(status=self.status, body=self.body(), headers=self.headers())

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if self.status == 401:
            if self.code == TOKEN_MISSING:
                # RFC 6750 §3.1: no error code when the request carried no credentials.
                headers["WWW-Authenticate"] = "Bearer"
            else:
                headers["WWW-Authenticate"] = (
                    f'Bearer error="invalid_token", error_description="{_quote(self.message)}"'
                )
        elif self.code == INSUFFICIENT_SCOPE:
            value = 'Bearer error="insufficient_scope"'
            if self.scope:
                value += f', scope="{_quote(self.scope)}"'
            headers["WWW-Authenticate"] = value
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(0, int(self.retry_after)))
        return headers


# What went wrong with the upstream, for the access line and the upstream_errors metric:
# a closed set an operator can aggregate on.
REFUSED: Final = "refused"  # nothing listened (connection refused)
UNREACHABLE: Final = "unreachable"  # no route, no such host, another connect failure
TIMEOUT: Final = "timeout"  # connecting, or waiting for the answer, took too long
RESET: Final = "reset"  # the connection ended before the answer did
BAD_ANSWER: Final = "bad_answer"  # an answer that is not HTTP, too large a head, a 101 unasked
UPSTREAM_CAUSES: Final = (REFUSED, UNREACHABLE, TIMEOUT, RESET, BAD_ANSWER)


def bad_request(message: str) -> ProxyError:
    return ProxyError(BAD_REQUEST, message)


def upstream_failure(cause: str) -> ProxyError:
    """The client's 502 or 504 for an upstream failure of this kind."""
    if cause == TIMEOUT:
        return ProxyError(UPSTREAM_TIMEOUT, "the upstream did not answer in time", cause=cause)
    return ProxyError(UPSTREAM_UNAVAILABLE, "the upstream is unavailable", cause=cause)


def upstream_cause(exc: BaseException) -> str | None:
    """The kind of an exception raised while talking to the upstream (either door, HTTP or
    WebSocket), or None when it is not the upstream's failure."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, aiohttp.ClientConnectorError):
        return REFUSED if isinstance(exc.os_error, ConnectionRefusedError) else UNREACHABLE
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return BAD_ANSWER
    if isinstance(exc, aiohttp.ClientError | OSError):
        # A connection that was there and went away (reset, disconnected, broken pipe).
        return RESET
    return None


def internal_error(exc: BaseException, door: str) -> ProxyError:
    """Either door's last resort: a failure of the proxy's own (a bug, or a library raising
    what it should not) is logged and answered 500 `internal_error`; the connection closes
    after it. The log line names the exception's type and where it was raised, never its
    message, which may quote what the request carried."""
    where = "?"
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        where = f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}:{tb.tb_lineno}"
        tb = tb.tb_next
    log.error(
        "request failed inside the proxy",
        extra={"door": door, "error": type(exc).__name__, "where": where},
    )
    return ProxyError(INTERNAL_ERROR, "the proxy failed to handle this request")
