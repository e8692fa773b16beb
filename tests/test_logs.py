"""Access log lines: exact JSON, fields from closed sets only."""

from __future__ import annotations

import io
import json
import re

import pytest

from proxy.logs import AccessLog


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
