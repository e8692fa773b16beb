"""Following one request through the proxy and into the API's own logs: its request id
(`headers.request_id`, `X-Request-Id` by default) and its W3C trace context.

A request id a client sends is honoured as it is and passed on; a request without one
gets one made here, which goes upstream and back to the client (in the answer, unless
the upstream's answer already names it). Refusals the proxy answers itself carry it
either way. `traceparent` passes upstream
untouched (it is any other field to the proxy); the access line carries its trace id.
Pure: bytes and strings in, strings out.
"""

from __future__ import annotations

import itertools
import os
from typing import Final

# W3C Trace Context §3.2: version-traceid-parentid-flags, 2-32-16-2 lower-case hex digits;
# version ff is forbidden and an all-zero trace id invalid; a later version may append
# `-` and more fields, version 00 may not.
_TRACEPARENT_SIZE: Final = 55
_ZERO_TRACE: Final = b"0" * 32
# Every byte to its class: `h` a lower-case hex digit, `-` itself, `?` anything else.
_CLASSES: Final = bytes(
    104 if chr(b) in "0123456789abcdef" else 45 if b == 45 else 63 for b in range(256)
)
_SHAPE: Final = b"hh-" + b"h" * 32 + b"-" + b"h" * 16 + b"-hh"
# A request id is logged as sent, up to this many characters (it is the client's text).
MAX_REQUEST_ID: Final = 128


class Correlation:
    """The request-id field of one config (`headers.request_id`; "" is off)."""

    __slots__ = ("_needle", "enabled", "field", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.enabled = bool(name)
        # `\r\nX-Request-Id: `: what is appended, with the id, to a head that had none.
        self.field = f"\r\n{name}: ".encode("latin-1")
        self._needle = f"\r\n{name.lower()}:".encode("latin-1")

    def in_block(self, block: bytes) -> bool:
        """Whether a field block (the upstream's answer) carries the request id. Asked
        only of answers to requests the id was made for: rare on partners' traffic."""
        return self.enabled and block.lower().find(self._needle) >= 0


# Unique across pods and restarts without a system call per request: 64 random bits per
# process, then a counter started at 2**60, so that its hex() is 16 digits for the next
# 2**63 requests (W3C and Envoy ids are random; nothing reads ours as more than an
# opaque, unique string).
_PROCESS: Final = os.urandom(8).hex()
_sequence = itertools.count(1 << 60)


def new_request_id() -> str:
    """32 hex digits: this process's random half, then its count of requests (hex() and
    a concatenation: a format spec costs several times as much, per request)."""
    return _PROCESS + hex(next(_sequence))[2:]


def traceparent_field(value: str | None) -> bytes | None:
    """A `traceparent` aiohttp decoded, as the bytes the fast path keeps (a character
    beyond latin-1 becomes `?`: no valid traceparent has one)."""
    return None if value is None else value.encode("latin-1", "replace")


def trace_id(traceparent: bytes | None) -> str | None:
    """The trace id of a valid `traceparent` (its bytes as received), else None. Its
    first 55 bytes, each mapped to its class, must spell `_SHAPE`: one C-level pass (a
    Python loop over the bytes cost 1.7k instructions a request, a regex 4.3k), and
    every access line with a traceparent asks."""
    if traceparent is None:
        return None
    tp = traceparent
    size = len(tp)
    if size < _TRACEPARENT_SIZE or tp.startswith(b"ff"):
        return None
    if size > _TRACEPARENT_SIZE and (tp[_TRACEPARENT_SIZE] != 45 or tp.startswith(b"00")):
        return None
    if tp[:_TRACEPARENT_SIZE].translate(_CLASSES) != _SHAPE:
        return None
    trace = tp[3:35]
    return None if trace == _ZERO_TRACE else trace.decode("ascii")
