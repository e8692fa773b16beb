"""A port already taken, through the CLI: `run`, `run --workers` and `demo` write one JSON
log line naming the address, the config key and the variable that moves it, and exit 2 —
no traceback; the demo prints its curl lines only once all five of its listeners listen."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import unused_port

from tests.support import config_dict

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "CLERK_SECRET_KEY": "sk_test_unit"}


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other program listens on (without SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _config(tmp_path: Path, port: int, admin: int) -> Path:
    raw = config_dict("http://127.0.0.1:1", listen={"port": port}, admin={"port": admin})
    raw["clerk"]["secret_key"] = "${CLERK_SECRET_KEY}"
    raw["listen"]["port"] = f"${{TEST_PROXY_PORT:-{port}}}"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.process.cli", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False,
    )


def _one_line(stderr: str) -> dict[str, Any]:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    line: dict[str, Any] = json.loads(lines[0])
    assert line["level"] == "error" and line["msg"] == "cannot listen: address already in use"
    assert line["errno"] == "EADDRINUSE"
    return line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_on_a_taken_listen_port(tmp_path: Path, taken: int, workers: str) -> None:
    config = _config(tmp_path, taken, unused_port())
    done = _cli("run", "--config", str(config), "--workers", workers, env=ENV)
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert line["address"] == f"127.0.0.1:{taken}"
    assert line["key"] == "listen.port" and line["env"] == "TEST_PROXY_PORT"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_on_a_taken_admin_port(tmp_path: Path, taken: int, workers: str) -> None:
    config = _config(tmp_path, unused_port(), taken)
    done = _cli("run", "--config", str(config), "--workers", workers, env=ENV)
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert line["address"] == f"127.0.0.1:{taken}" and line["key"] == "admin.port"
    assert "env" not in line  # the admin port is written in the file


def _demo_env(**ports: int) -> dict[str, str]:
    return {
        **os.environ,
        "PROXY_PORT": str(ports["proxy"]),
        "ADMIN_PORT": str(ports["admin"]),
        "UPSTREAM_URL": f"http://127.0.0.1:{ports['upstream']}",
        "CLERK_API_URL": f"http://127.0.0.1:{ports['clerk']}",
        "ISSUER_URL": f"http://127.0.0.1:{ports['issuer']}",
    }


@pytest.mark.parametrize(
    ("which", "key", "variable"),
    [
        ("proxy", "listen.port", "PROXY_PORT"),
        ("admin", "admin.port", "ADMIN_PORT"),
        ("upstream", "upstream.url", "UPSTREAM_URL"),
        ("clerk", "clerk.api_url", "CLERK_API_URL"),
        ("issuer", "issuers[0].issuer", "ISSUER_URL"),
    ],
)
def test_demo_on_a_taken_port(taken: int, which: str, key: str, variable: str) -> None:
    ports = {name: unused_port() for name in ("proxy", "admin", "upstream", "clerk", "issuer")}
    ports[which] = taken
    done = _cli("demo", "--config", "config/local.yaml", env=_demo_env(**ports))
    assert done.returncode == 2
    assert "curl" not in done.stdout  # nothing printed that would not work
    line = _one_line(done.stderr)
    assert line["address"] == f"127.0.0.1:{taken}"
    assert line["key"] == key and line["env"] == variable


async def test_demo_prints_its_curl_lines_once_everything_listens() -> None:
    ports = {name: unused_port() for name in ("proxy", "admin", "upstream", "clerk", "issuer")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "demo", "--config", "config/local.yaml",
        cwd=ROOT, env=_demo_env(**ports),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        curl = ""
        while not curl:
            raw = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert raw, "the demo ended before printing its curl lines"
            if "curl -s -H 'Authorization: Bearer" in raw.decode():
                curl = raw.decode()
        # The moment the line is printed, every port answers: no retry, no wait.
        for port in ports.values():
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        token = curl.split("Bearer ")[1].split("'")[0]
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports['proxy']}/api/v1/matches",
            headers={"Authorization": f"Bearer {token}"},
        )
        answer = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
        assert answer.status == 200
        assert json.loads(answer.read())["seen_principal"]["X-Auth-Principal-Type"] == "machine"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
