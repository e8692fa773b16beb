"""Log lines that cannot be forged: whatever bytes a client sends in the method, the path
or the fields, through either door, every line the proxy writes (the access log and every
other logger) is one JSON object with only the fields the proxy puts there."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.observe.logs import AccessLog, JsonFormatter
from proxy.request.app import PROXY, create_app
from tests.support import StubVerifier, make_config
from tests.support_raw import RawUpstream, exchange

NASTY = [b"\r", b"\n", b"\x00", b'"', b"\\", b"\xff\xfe", b"\xc3\x28", b'","status":1,"x":"', b"\x1b[2J"]

ACCESS_KEYS = {
    "ts", "time", "level", "logger", "msg", "method", "route", "status", "duration_ms",
    "principal_type", "request_id", "client_ip",
}
# Present when there is something to say: who (a verified principal) and why (a refusal).
OPTIONAL_KEYS = {"principal_id", "token_id", "issuer", "code", "cause", "trace_id"}


def requests() -> Iterator[bytes]:
    for bad in NASTY:
        # in the method (a token to most parsers, so also the token characters a JSON
        # string must escape), in the path and the query, in a field name and a value
        yield b"G" + bad + b"T /public/x/ok HTTP/1.1\r\nHost: h\r\n\r\n"
        yield b"GET /public/" + bad + b"/ok?q=" + bad + b" HTTP/1.1\r\nHost: h\r\n\r\n"
        yield b"GET /public/x/ok HTTP/1.1\r\nHost: h\r\nX-" + bad + b": v\r\n\r\n"
        yield b"GET /public/x/ok HTTP/1.1\r\nHost: h\r\nX-V: a" + bad + b"b\r\n\r\n"
        yield b"GET /api/x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer " + bad + b"\r\n\r\n"
        yield b"GET /public/x/ok HTTP/1.1\r\nHost: h" + bad + b"\r\n\r\n"
        yield b"GET /public/x/ok HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1" + bad + b"\r\n\r\n"
    for method in (b"M'X", b"M|X", b"A~B", b"X!#$%&*+-.^_`", b"PROPFIND", b"\nGET", b"\n\n\rGET"):
        yield method + b" /public/x/ok HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


async def test_no_client_byte_breaks_a_log_line(aiohttp_server: Any, captured: io.StringIO) -> None:
    upstream = await RawUpstream().start()
    config = make_config(upstream.url, logging={"level": "DEBUG", "access_log": True})
    app = create_app(config, verifier=StubVerifier())
    access = io.StringIO()
    app[PROXY].access_log = AccessLog(access)
    proxy = await aiohttp_server(app)
    assert proxy.port is not None
    sent = list(requests())
    for raw in sent:
        await exchange(proxy.port, raw, idle=0.05, limit=2)
    app[PROXY].access_log.flush()
    await upstream.close()

    access_lines = access.getvalue().splitlines()
    assert access_lines  # the accepted requests were logged
    assert len(access_lines) <= len(sent)
    for line in access_lines:
        entry = json.loads(line)
        assert ACCESS_KEYS <= set(entry) <= ACCESS_KEYS | OPTIONAL_KEYS, line
        assert line.isascii()
    methods = {json.loads(line)["method"] for line in access_lines}
    assert all("\r" not in m and "\n" not in m for m in methods)
    for line in captured.getvalue().splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict) and {"ts", "level", "logger", "msg"} <= set(entry), line
