"""Structured logs: one JSON object per line on stderr.

Nothing here formats tokens: the access line's fields are closed sets (route names,
status and spec codes, principal types), the method, and ids — of the principal, of its
token (never the token: it never reaches a `Principal`), of the request and its trace;
it never carries a path or query string. Every string is JSON-encoded (ASCII), so no byte a client sends can end a line or
add a field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from typing import ClassVar, Final, TextIO

from proxy.core.errors import ProxyError
from proxy.core.principal import Principal
from proxy.observe.correlation import MAX_REQUEST_ID, trace_id

# "000" … "999", the fractional part of a second or millisecond figure, and "0" … "999",
# a whole number of milliseconds: by table, integer arithmetic and a lookup instead of a
# float format or an int-to-str conversion per figure.
_THOUSANDTHS: Final = tuple(f"{i:03d}" for i in range(1000))
_COUNTS: Final = tuple(str(i) for i in range(1000))
# A C static under mypyc: no module lookup per call.
_wall_clock: Final = time.time
# Kinds of access line kept rendered (see AccessLog).
_MAX_RENDERED: Final = 1024


# One request's record: method, route, status, client address; ended (ms since the
# epoch), took (µs); principal, refusal code, its cause, request id, traceparent.
_Line = tuple[
    str, str, int, str | None, int, int, Principal, str | None, str | None, str | None, bytes | None
]


# Set by the `--workers` supervisor for each worker it starts: every line a worker writes
# says which one (the supervisor's own lines carry none).
WORKER_ENV: Final = "CLERK_AUTH_PROXY_WORKER"


def worker_index() -> int | None:
    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra` fields become top-level keys."""

    _STANDARD: ClassVar[frozenset[str]] = frozenset(
        vars(logging.LogRecord("", 0, "", 0, "", None, None))
    ) | {"message"}

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self._worker is not None:
            out["worker"] = self._worker
        for key, value in vars(record).items():
            if key not in self._STANDARD:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(worker_index()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would duplicate ours and print paths with query strings.
    logging.getLogger("aiohttp.access").disabled = True


class AccessLog:
    """One JSON line per request, written in batches.

    The hot path only notes what a line will say; lines are formatted and go out in one
    write at most every `interval` seconds or `max_lines` requests, instead of a
    logging-module round trip and a write(2) per request. Formatting a batch in one loop
    costs less than a line at a time between requests, whose caches have gone cold, and
    the parts of a line that only its request's kind decides (method, route, status,
    client address) are rendered once per kind. `flush()` runs at shutdown so nothing is
    lost.

    Who and why: the principal's type, id, token id (a token's id, never its secret: the
    raw token never reaches a `Principal`) and issuer; the refusal's spec code (also for
    an `optional` route's anonymous fallback, whose answer is a 200), and for an upstream
    failure its `cause` (`errors.UPSTREAM_CAUSES`); the request id and the trace id of a
    W3C `traceparent`. Every string is JSON-encoded: nothing a client or a token's issuer
    writes can end a line or add a field.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 0.2,
        max_lines: int = 256,
        worker: int | None = None,
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._max_lines = max_lines
        self._worker = "" if worker is None else f'"worker":{worker},'
        # The requests not yet written, one flat record each (one tuple and one append per
        # request): what kind it was, when it ended (ms since the epoch), how long it took
        # (µs), and who and why.
        self._lines: list[_Line] = []
        # A kind's JSON before and after its duration. Partners call few routes from few
        # addresses, so this stays small; it is emptied when a scanner makes it grow.
        self._rendered: dict[tuple[str, str, int, str | None], tuple[str, str]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def record(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        principal: Principal,
        client_ip: str | None,
        why: ProxyError | None = None,
        request_id: str | None = None,
        traceparent: bytes | None = None,
    ) -> None:
        lines = self._lines
        lines.append(
            (
                method,
                route,
                status,
                client_ip,
                int(_wall_clock() * 1000),
                int(seconds * 1_000_000),
                principal,
                None if why is None else why.code,
                None if why is None else why.cause,
                request_id,
                traceparent,
            )
        )
        if len(lines) >= self._max_lines:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def _render(self, kind: tuple[str, str, int, str | None]) -> tuple[str, str]:
        method, route, status, client_ip = kind
        if len(self._rendered) >= _MAX_RENDERED:
            self._rendered.clear()
        # Every string is JSON-encoded, closed sets included: a method is whatever token
        # a parser let through, and nothing a client sends may end a line or add a field.
        rendered = self._rendered[kind] = (
            f'Z","level":"info","logger":"proxy.access",{self._worker}"msg":"request",'
            f'"method":{_json(method)},"route":{_json(route)},"status":{status},'
            '"duration_ms":',
            f',"client_ip":{_json(client_ip)}}}\n',
        )
        return rendered

    def text(self) -> str:
        """The lines not yet written, formatted, each ending in a newline; they are then
        forgotten. Built as one list of pieces joined once: a few table lookups and
        appends a line, where an f-string per line costs three times as much."""
        pieces: list[str] = []
        rendered = self._rendered
        second = -1
        second_text = time_text = ""
        last_kind: tuple[str, str, int, str | None] | None = None
        parts = ("", "")
        last_principal: Principal | None = None
        principal_text = ""
        for line in self._lines:
            (
                method,
                route,
                status,
                client_ip,
                ended,
                took,
                principal,
                code,
                cause,
                request_id,
                traceparent,
            ) = line
            if (
                last_kind is None
                or status != last_kind[2]
                or route != last_kind[1]
                or method != last_kind[0]
                or client_ip != last_kind[3]
            ):  # a partner's requests come in runs of one kind
                last_kind = (method, route, status, client_ip)
                found = rendered.get(last_kind)
                parts = found if found is not None else self._render(last_kind)
            if ended // 1000 != second:  # lines of one batch share their second
                second = ended // 1000
                second_text = f'{{"ts":{second}.'
                time_text = f',"time":"{time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))}.'
            # And of one principal: the same one, though the cache may hand out a new
            # object for each hit.
            if principal is not last_principal and (
                last_principal is None
                or principal.id != last_principal.id
                or principal.token_id != last_principal.token_id
                or principal.type != last_principal.type
                or principal.issuer != last_principal.issuer
            ):
                principal_text = _principal_text(principal)
            last_principal = principal
            ms = took // 1000
            thousandths = _THOUSANDTHS[ended % 1000]
            pieces.append(second_text)
            pieces.append(thousandths)
            pieces.append(time_text)
            pieces.append(thousandths)
            pieces.append(parts[0])
            pieces.append(_COUNTS[ms] if ms < 1000 else str(ms))
            pieces.append(".")
            pieces.append(_THOUSANDTHS[took % 1000])
            pieces.append(principal_text)
            if code is not None:
                pieces.append(f',"code":{_json(code)}')
                if cause is not None:
                    pieces.append(f',"cause":{_json(cause)}')
            if request_id is not None:
                pieces.append(',"request_id":')
                pieces.append(_encode_ascii(request_id[:MAX_REQUEST_ID]))
            trace = trace_id(traceparent)
            if trace is not None:
                pieces.append(',"trace_id":"')
                pieces.append(trace)
                pieces.append('"')
            pieces.append(parts[1])
        self._lines = []
        return "".join(pieces)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        stream = self._stream or sys.stderr
        text = self.text()
        with contextlib.suppress(OSError, ValueError):  # a closed stderr must not kill requests
            stream.write(text)
            stream.flush()


# The C encoder json.dumps ends in, without its per-call Python setup: a string per
# field per line adds up.
_encode_ascii: Final = json.encoder.encode_basestring_ascii


def _json(value: str | None) -> str:
    return "null" if value is None else _encode_ascii(value)


def _principal_text(principal: Principal) -> str:
    """The principal's part of a line: its type always, the rest when it has them."""
    out = f',"principal_type":{_json(principal.type)}'
    if principal.id is not None:
        out += f',"principal_id":{_json(principal.id)}'
    if principal.token_id is not None:
        out += f',"token_id":{_json(principal.token_id)}'
    if principal.issuer is not None:
        out += f',"issuer":{_json(principal.issuer)}'
    return out
