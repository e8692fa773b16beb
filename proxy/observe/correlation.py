"""Following one request through the proxy and into the API's own logs: its request id
(`headers.request_id`, `X-Request-Id` by default) and its W3C trace context.

A request id a client sends is honoured as it is; a request without one gets one made
here, which goes upstream and back to the client. `traceparent` passes upstream
untouched (it is any other field to the proxy); the access line carries its trace id.
Pure: bytes and strings in, strings out.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Final

# W3C Trace Context §3.2: version-traceid-parentid-flags, lower-case hex; an all-zero
# trace id is invalid, and version ff is forbidden.
_TRACEPARENT: Final = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}"
)
# A request id is logged as sent, up to this many characters (it is the client's text).
MAX_REQUEST_ID: Final = 128


class Correlation:
    """The request-id field of one config: finding it (and `traceparent`) in a head."""

    __slots__ = ("_needle", "enabled", "field", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.enabled = bool(name)
        # `\r\nX-Request-Id: <id>`: what is appended to a head that had none.
        self.field = f"\r\n{name}: ".encode("latin-1")
        # Found in the lower-cased field block by `bytes.find`: a fifth of a regex's cost
        # over a whole block, which every request pays.
        self._needle = f"\r\n{name.lower()}:".encode("latin-1") if name else b""

    def of_block(self, block: bytes) -> tuple[str | None, str | None]:
        """The first request id and the first traceparent of a field block."""
        lowered = block.lower()
        request_id = _value(block, lowered, self._needle) if self.enabled else None
        return request_id, _value(block, lowered, _TRACEPARENT_FIELD)

    def in_block(self, block: bytes) -> bool:
        """Whether a field block (the upstream's answer) carries the request id."""
        return self.enabled and block.lower().find(self._needle) >= 0


_TRACEPARENT_FIELD: Final = b"\r\ntraceparent:"


def _value(block: bytes, lowered: bytes, needle: bytes) -> str | None:
    start = lowered.find(needle)
    if start < 0:
        return None
    start += len(needle)
    end = block.find(b"\r\n", start)
    return block[start : end if end >= 0 else len(block)].strip(b" \t").decode("latin-1")


# Unique across pods and restarts without a system call per request: 64 random bits per
# process, then a counter (W3C and Envoy ids are random; nothing reads ours as more than
# an opaque, unique string).
_PROCESS: Final = os.urandom(8).hex()
_sequence = itertools.count(1)


def new_request_id() -> str:
    """32 hex digits: this process's random half, then its count of requests."""
    return f"{_PROCESS}{next(_sequence):016x}"


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid `traceparent`, else None."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent.strip())
    return match.group(1) if match is not None else None
