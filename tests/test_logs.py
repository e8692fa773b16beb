"""Access log lines: exact JSON, fields from closed sets only."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.errors import TOKEN_EXPIRED, ProxyError, upstream_failure
from proxy.core.principal import ANONYMOUS, Principal
from proxy.observe.correlation import trace_id, traceparent_field
from proxy.observe.logs import AccessLog
from proxy.request.runtime import build_runtime
from tests.support import StubVerifier, make_config


@pytest.mark.parametrize(
    ("seconds", "duration"),
    [(0.0, "0.000"), (0.0012345, "1.234"), (0.00005, "0.050"), (2.5, "2500.000"), (61.0, "61000.000")],
)
async def test_access_line(seconds: float, duration: str) -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.record("GET", 'we"ird', 200, seconds, MACHINE, "203.0.113.7", None, "req-1", TRACEPARENT.encode())
    log.record("POST", "api", 502, seconds, ANONYMOUS, None, upstream_failure("refused"))
    log.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert re.search(r'"duration_ms":' + re.escape(duration) + ",", lines[0])
    assert re.fullmatch(r'\{"ts":\d{10}\.\d{3},"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",.*', lines[0])
    assert first["time"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(first["ts"])))
    assert first["time"][-4:-1] == lines[0].split(",")[0][-3:], "time and ts name one instant"
    assert first == {
        "ts": first["ts"], "time": first["time"], "level": "info", "logger": "proxy.access",
        "msg": "request", "method": "GET", "route": 'we"ird', "status": 200,
        "duration_ms": float(duration), "principal_type": "machine",
        "principal_id": "mch_2x", "token_id": "mt_0123456789abcdef0123456789abcdef",
        "request_id": "req-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "client_ip": "203.0.113.7",
    }
    assert {k: v for k, v in second.items() if k not in ("ts", "time", "duration_ms")} == {
        "level": "info", "logger": "proxy.access", "msg": "request", "method": "POST",
        "route": "api", "status": 502, "principal_type": "anonymous", "code": "upstream_unavailable",
        "cause": "refused", "client_ip": None,
    }


MACHINE = Principal(
    type="machine", id="mch_2x", token_type="m2m_token",
    token_id="mt_0123456789abcdef0123456789abcdef",
)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        (TRACEPARENT, "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # all-zero: invalid
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # version ff
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case
        ('00-4bf92f3577b34da6a3ce929d0e0e473"-00f067aa0ba902b7-01', None),
        ("garbage", None),
        (None, None),
    ],
)
async def test_trace_id_only_from_a_valid_traceparent(traceparent: str | None, trace_id: str | None) -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.record("GET", "api", 200, 0.001, ANONYMOUS, None, None, None, traceparent_field(traceparent))
    log.flush()
    assert json.loads(out.getvalue()).get("trace_id") == trace_id


async def test_who_and_why_are_json_encoded_and_bounded() -> None:
    # A request id is the client's text; a principal id and issuer come from a token's
    # issuer: none of them may end a line, add a field, or grow a line without bound.
    out = io.StringIO()
    log = AccessLog(out)
    evil = Principal(type="user", id='u"},"admin":true,"x":{"', issuer="line\nbreak")
    refusal = ProxyError(TOKEN_EXPIRED, "the token has expired")
    log.record("GET", "api", 200, 0.001, evil, None, refusal, "r" * 10_000 + '"\n')
    log.flush()
    (line,) = out.getvalue().splitlines()
    parsed = json.loads(line)
    assert parsed["principal_id"] == 'u"},"admin":true,"x":{"' and "admin" not in parsed
    assert parsed["issuer"] == "line\nbreak" and parsed["code"] == "token_expired"
    assert parsed["request_id"] == "r" * 128


def _expected_duration(seconds: float) -> str:
    us = int(seconds * 1_000_000)
    return f"{us // 1000}.{us % 1000:03d}"


@pytest.mark.parametrize("max_lines", [1, 7, 256])
async def test_batches_keep_every_line_in_order(max_lines: int) -> None:
    # Lines are formatted when a batch is written (every max_lines requests, the timer,
    # or shutdown): whatever the batching, each request's line is exactly its own.
    # More kinds than logs._MAX_RENDERED, so the rendered-kinds memo empties midway.
    out = io.StringIO()
    log = AccessLog(out, max_lines=max_lines)
    # Kinds come in runs of three (k), figures change on every request (i).
    records = [
        (
            ("GET", "POST", "DELETE")[k % 3],
            f"route-{k % 1500}",
            (200, 401, 502)[k % 3],
            (0.0, 0.0004, 0.9999, 1.5, 123.456789)[i % 5],
            (MACHINE, ANONYMOUS)[k % 2],
            None if k % 4 == 0 else f"198.51.100.{k % 200}",
        )
        for i, k in ((i, i // 3) for i in range(4500))
    ]
    before = time.time()
    for record in records:
        log.record(*record)
    log.flush()
    after = time.time()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(records)
    for line, (method, route, status, seconds, principal, ip) in zip(lines, records, strict=True):
        parsed = json.loads(line)
        assert before - 0.001 <= parsed.pop("ts") <= after + 0.001
        parsed.pop("time")
        who = {"principal_id": principal.id, "token_id": principal.token_id} if principal.id else {}
        assert parsed == {
            "level": "info", "logger": "proxy.access", "msg": "request", "method": method,
            "route": route, "status": status, "duration_ms": float(_expected_duration(seconds)),
            "principal_type": principal.type, **who, "client_ip": ip,
        }
        assert f'"duration_ms":{_expected_duration(seconds)},' in line


async def test_nothing_pending_writes_nothing() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.flush()
    log.record("GET", "api", 200, 0.001, MACHINE, None)
    log.flush()
    log.flush()
    assert len(out.getvalue().splitlines()) == 1


@pytest.mark.parametrize(
    ("access_log", "level", "written"),
    [(True, "DEBUG", True), (True, "INFO", True), (True, "WARNING", False), (True, "ERROR", False),
     (False, "INFO", False), (False, "DEBUG", False)],
)
def test_which_configs_write_access_lines(access_log: bool, level: str, written: bool) -> None:
    # Access lines are INFO: decided once per config (runtime), read on every request.
    config = make_config(logging={"access_log": access_log, "level": level})
    assert build_runtime(config, StubVerifier()).access_log is written


@pytest.mark.parametrize(
    ("traceparent", "trace"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", None),  # 00: exactly 55
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case
        ("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", None),
        ("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e47-6-00f067aa0ba902b7-01", None),  # a dash inside
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\x00", None),
        ("", None),
        (None, None),
    ],
)
def test_trace_id_of_a_traceparent(traceparent: str | None, trace: str | None) -> None:
    assert trace_id(traceparent_field(traceparent)) == trace


# W3C Trace Context §3.2 as a regex: the reference the byte checks must agree with.
_TRACEPARENT = re.compile(rb"(?!ff)[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def _reference(tp: bytes) -> str | None:
    found = _TRACEPARENT.match(tp)
    if found is None or (len(tp) > 55 and (tp[55:56] != b"-" or tp.startswith(b"00"))):
        return None
    trace = found.group(1)
    return None if trace == b"0" * 32 else trace.decode()


_VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@given(
    st.lists(st.tuples(st.integers(0, 59), st.sampled_from(b"0aAf9-_gx \x00\xff")), max_size=4),
    st.sampled_from([b"", b"-", b"-x", b"x", b"-01-zz"]),
    st.sampled_from([b"00", b"01", b"ff", b"fe"]),
)
def test_trace_id_agrees_with_the_grammar(
    edits: list[tuple[int, int]], tail: bytes, version: bytes
) -> None:
    raw = bytearray(version + _VALID[2:] + tail)
    for at, byte in edits:
        if at < len(raw):
            raw[at] = byte
    assert trace_id(bytes(raw)) == _reference(bytes(raw))
