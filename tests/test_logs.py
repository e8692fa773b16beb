"""Access log lines: exact JSON, fields from closed sets only."""

from __future__ import annotations

import io
import json
import re
import time

import pytest

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
    log.record("GET", 'we"ird', 200, seconds, "machine", "203.0.113.7")
    log.record("POST", "api", 503, seconds, "anonymous", None)
    log.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert re.search(r'"duration_ms":' + re.escape(duration) + ",", lines[0])
    assert re.fullmatch(r'\{"ts":\d{10}\.\d{3},.*', lines[0])
    assert first == {
        "ts": first["ts"], "level": "info", "logger": "proxy.access", "msg": "request",
        "method": "GET", "route": 'we"ird', "status": 200, "duration_ms": float(duration),
        "principal_type": "machine", "client_ip": "203.0.113.7",
    }
    assert (second["method"], second["status"], second["client_ip"]) == ("POST", 503, None)


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
            ("machine", "anonymous")[k % 2],
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
    for line, (method, route, status, seconds, principal_type, ip) in zip(lines, records, strict=True):
        parsed = json.loads(line)
        assert before - 0.001 <= parsed.pop("ts") <= after + 0.001
        assert parsed == {
            "level": "info", "logger": "proxy.access", "msg": "request", "method": method,
            "route": route, "status": status, "duration_ms": float(_expected_duration(seconds)),
            "principal_type": principal_type, "client_ip": ip,
        }
        assert f'"duration_ms":{_expected_duration(seconds)},' in line


async def test_nothing_pending_writes_nothing() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.flush()
    log.record("GET", "api", 200, 0.001, "machine", None)
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
