"""`clerk-auth-proxy demo` as a user runs it: the printed client-credentials line works —
its token request, run by a real shell and curl, and the token on the API through the proxy."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import unused_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_the_demo_prints_a_working_client_credentials_line() -> None:
    ports = {name: unused_port() for name in ("proxy", "admin", "clerk", "issuer", "upstream")}
    env = {
        **os.environ,
        "PROXY_PORT": str(ports["proxy"]),
        "ADMIN_PORT": str(ports["admin"]),
        "CLERK_API_URL": f"http://127.0.0.1:{ports['clerk']}",
        "ISSUER_URL": f"http://127.0.0.1:{ports['issuer']}",
        "UPSTREAM_URL": f"http://127.0.0.1:{ports['upstream']}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "demo", "--config", "config/local.yaml",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        seeded: dict[str, str] = {}
        while not seeded:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "the demo ended before printing its lines"
            lines.append(line.rstrip("\n"))
            if line.startswith("{"):
                seeded = json.loads(line)
        shown = "\n".join(lines)
        token_line = next(x for x in lines if x.strip().startswith("TOKEN=$("))
        call_line = next(x for x in lines if "Bearer $TOKEN" in x)
        assert seeded["issuer_token_request"] in shown
        for _ in range(50):  # the proxy listens a moment after the lines are printed
            check = await asyncio.create_subprocess_shell(
                f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{ports['proxy']}/healthz",
                stdout=asyncio.subprocess.PIPE,
            )
            if (await check.communicate())[0] == b"200":
                break
            await asyncio.sleep(0.1)
        script = f"{token_line.strip()}\n{call_line.strip()}\n"
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", script, stdout=asyncio.subprocess.PIPE, env=env
        )
        out, _ = await asyncio.wait_for(shell.communicate(), 30)
        seen = json.loads(out)["seen_principal"]
        seen = {k.lower(): v for k, v in seen.items()}
        assert seen["x-auth-principal-type"] == "machine"
        assert seen["x-auth-principal-id"] == "scores-partner-svc"
        assert seen["x-auth-issuer"] == "demo-issuer"
        assert seen["x-auth-scopes"] == "feeds:read scores:read"
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
