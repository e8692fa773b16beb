"""The day-two question "partner X says they get 401s", answered from the access log of a
real process (the CLI, either door) verifying against the Clerk emulator: one line per
request naming who (principal, token id, issuer) and why (the spec code, or what went
wrong with the upstream), with the request's id and trace id — and never a secret."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import unused_port

from proxy.emulator.app import ClerkEmulator
from tests.support import Recorder, config_dict, header_values, upstream_app
from tests.test_process import ROOT, Running

ROUTES = [
    {"name": "matches", "path": "/api/v1/matches/**", "auth": "required"},
    {"name": "admin", "path": "/api/v1/admin/**", "auth": "required", "scopes": ["scores:admin"]},
]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def _start(tmp_path: Path, upstream: str, clerk: str, fast_path: bool) -> Running:
    port, admin = unused_port(), unused_port()
    raw = config_dict(upstream, listen={"port": port, "fast_path": fast_path}, admin={"port": admin})
    raw["routes"] = ROUTES
    raw["clerk"] = {"api_url": clerk, "secret_key": "${CLERK_SECRET_KEY}"}
    raw["cache"] = {"ttl_seconds": 0.2}
    raw["logging"] = {"level": "INFO", "access_log": True}


    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "run", "--config", str(tmp_path / "c.yaml"),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "CLERK_SECRET_KEY": "sk_test_lines"},
    )
    running = Running(proc, port, admin)
    await running.wait_log("serving")
    return running


async def _get(
    running: Running, path: str, token: str | None = None, **headers: str
) -> tuple[int, aiohttp.typedefs.LooseHeaders]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.get(running.url(path), headers=headers) as resp:
        await resp.read()
        return resp.status, resp.headers


async def _line(running: Running, request_id: str) -> dict[str, Any]:
    for _ in range(100):
        found = [x for x in running.lines if x.get("request_id") == request_id]
        if found:
            (line,) = found
            return line
        await asyncio.sleep(0.05)
    raise AssertionError(f"no access line for {request_id}: {running.lines[-5:]}")


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
async def test_every_refusal_says_who_and_why(
    tmp_path: Path, aiohttp_server: Any, fast_path: bool
) -> None:
    emulator = ClerkEmulator("sk_test_lines")
    clerk = await aiohttp_server(emulator.app)
    recorder = Recorder()
    upstream = await aiohttp_server(upstream_app(recorder))
    running = await _start(
        tmp_path,
        str(upstream.make_url("")).rstrip("/"),
        str(clerk.make_url("")).rstrip("/"),
        fast_path,
    )
    partner = emulator.create_machine("partner")
    good = emulator.create_m2m_token(partner.id)
    expired = emulator.create_m2m_token(partner.id, seconds_until_expiration=1)
    revoked = emulator.create_m2m_token(partner.id)
    secrets = [good.secret, expired.secret, revoked.secret, "sk_test_lines"]
    try:
        # Accepted: who, and the request id a client sent goes up and comes back.
        status, headers = await _get(
            running, "/api/v1/matches", good.secret, **{"X-Request-Id": "partner-req-1",
                                                        "traceparent": TRACEPARENT}
        )
        # The client knows its own id: an answer that does not name it is left as it is.
        assert status == 200 and "X-Request-Id" not in headers
        assert header_values(recorder.last.headers, "X-Request-Id") == ["partner-req-1"]
        assert header_values(recorder.last.headers, "traceparent") == [TRACEPARENT]
        line = await _line(running, "partner-req-1")
        assert line["msg"] == "request" and line["status"] == 200 and "code" not in line
        assert (line["principal_type"], line["principal_id"], line["token_id"]) == (
            "machine", partner.id, good.id
        )
        assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"

        # No id sent: one is made, and the upstream and the client both get it.
        status, headers = await _get(running, "/api/v1/matches", good.secret)
        made = headers["X-Request-Id"]
        assert status == 200 and len(made) == 32
        assert header_values(recorder.last.headers, "X-Request-Id") == [made]
        assert (await _line(running, made))["principal_id"] == partner.id

        await asyncio.sleep(1.2)  # `expired` expires; `good`'s entry ages out too
        emulator.revoke_m2m_token(revoked.id, "leaked")
        cases: list[tuple[str, str | None, int, str]] = [
            ("missing", None, 401, "token_missing"),
            ("token-id", good.id, 401, "token_id_not_secret"),
            ("expired", expired.secret, 401, "token_expired"),
            ("revoked", revoked.secret, 401, "token_invalid"),
        ]
        for name, token, want_status, code in cases:
            status, headers = await _get(running, "/api/v1/matches", token, **{"X-Request-Id": name})
            assert (status, headers["X-Request-Id"]) == (want_status, name)
            line = await _line(running, name)
            assert (line["status"], line["code"]) == (want_status, code), line

        # A machine on a route asking for a scope it does not carry: 403, and who it was.
        status, _ = await _get(running, "/api/v1/admin/x", good.secret, **{"X-Request-Id": "scope"})
        line = await _line(running, "scope")
        assert (status, line["code"], line["principal_id"]) == (403, "insufficient_scope", partner.id)

        # Clerk down: a token not in the cache cannot be verified.
        emulator.set_fault("error", status=500)
        fresh = emulator.create_m2m_token(partner.id)
        secrets.append(fresh.secret)
        status, _ = await _get(running, "/api/v1/matches", fresh.secret, **{"X-Request-Id": "clerk"})
        line = await _line(running, "clerk")
        assert (status, line["code"]) == (503, "verification_unavailable")
        emulator.clear_faults()

        # Upstream down: 502, and what went wrong with it.
        await upstream.close()
        status, headers = await _get(running, "/api/v1/matches", good.secret, **{"X-Request-Id": "up"})
        line = await _line(running, "up")
        assert (status, headers["X-Request-Id"]) == (502, "up")
        assert line["code"] == "upstream_unavailable" and line["cause"] in ("refused", "reset")
    finally:
        if running.proc.returncode is None:
            running.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.proc.wait(), 30) == 0
    text = "\n".join(str(line) for line in running.lines)
    for secret in secrets:
        assert secret not in text
    access = [x for x in running.lines if x.get("logger") == "proxy.access"]
    assert len(access) == 9 and {x["msg"] for x in access} == {"request"}
