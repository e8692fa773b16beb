"""Descriptors as a budget, through a real process started under soft = hard = 1,024 (so
nothing can be raised): 1,500 keep-alive clients arrive at once. Those under the
client-connection ceiling are served; the excess is answered 503 `too_many_connections`
(JSON, `Retry-After`, `Connection: close`) and closed, a WebSocket upgrade likewise; the
admin port answers throughout; at capacity a connected partner's requests still reach
Clerk and the upstream and its WebSocket still relays (the reserve); once clients leave,
new ones are served again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import unused_port

from proxy.core.timeouts import ConnectionPolicy
from proxy.emulator.app import ClerkEmulator
from tests.support import config_dict
from tests.test_process import ROOT, Running

SOFT = 1024
WAVE = 1500
KEY = "sk_test_ceiling"
# Not a timing assertion: only how long a test waits for what must come before failing.
PATIENCE = 60.0


def _soft_and_hard_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, SOFT))


def _upstream(seen: list[str]) -> web.Application:
    """Records who each request came from; echoes WebSocket messages."""

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Auth-Principal-Id", "anonymous"))
        return web.Response(text="ok")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/api/ws", ws)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(line.split()[1]), headers, body)


async def _ask(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, token: str = ""
) -> Answer:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n".encode())
    await writer.drain()
    return await _read_answer(reader)


class Client:
    """One keep-alive client connection and its first answer."""

    def __init__(self, writer: asyncio.StreamWriter, answer: Answer) -> None:
        self.writer = writer
        self.answer = answer


async def _client(port: int) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Client(writer, await _ask(reader, writer, "/public/x"))


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


@pytest.fixture
async def own_descriptors() -> AsyncIterator[None]:
    """This test process opens more sockets than 1,024 itself (the clients)."""
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    if ours[1] < 4 * WAVE:
        pytest.skip(f"this machine's hard limit ({ours[1]}) is too low for {WAVE} clients")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(ours[0], 4 * WAVE), ours[1]))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, ours)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
async def test_past_the_ceiling_clients_get_a_clean_503_and_the_admin_port_and_reserve_work(
    tmp_path: Path, aiohttp_server: Any, own_descriptors: None, fast_path: bool
) -> None:
    emulator = ClerkEmulator(KEY)
    clerk = await aiohttp_server(emulator.app)
    seen: list[str] = []
    upstream = await aiohttp_server(_upstream(seen))
    partner = emulator.create_machine("partner")
    first, second = (emulator.create_m2m_token(partner.id) for _ in range(2))

    port, admin = unused_port(), unused_port()
    raw = config_dict(
        str(upstream.make_url("")).rstrip("/"),
        listen={"port": port, "fast_path": fast_path},
        admin={"port": admin},
    )
    raw["clerk"] = {"api_url": str(clerk.make_url("")).rstrip("/"), "secret_key": "${KEY}"}
    raw["routes"] = [
        {"name": "public", "path": "/public/**", "auth": "public"},
        {"name": "api", "path": "/api/**", "auth": "required"},
    ]
    # The upstream shares this test's loop with 1,500 clients, and its backlog may make a
    # connect wait for a SYN retry: let it be slow, never a 502 or 504.
    raw["upstream"]["read_timeout"] = raw["upstream"]["connect_timeout"] = PATIENCE
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "run", "--config", str(tmp_path / "c.yaml"),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "KEY": KEY}, preexec_fn=_soft_and_hard_1024,
    )
    running = Running(proc, port, admin)
    clients: list[Client] = []
    timeout = aiohttp.ClientTimeout(total=PATIENCE)
    try:
        line = await running.wait_log("file descriptors")
        ceiling = line["client_connections_ceiling"]
        assert (line["soft"], line["hard"]) == (SOFT, SOFT)
        assert ceiling == ConnectionPolicy().client_ceiling(SOFT) == (SOFT - 256) // 2
        await running.wait_log("serving")
        async with aiohttp.ClientSession(timeout=timeout) as s:
            # A partner connected before the wave: a keep-alive REST connection and a
            # WebSocket (two of the ceiling's connections).
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await _ask(reader, writer, "/api/x", first.secret)).status == 200
            auth = {"Authorization": f"Bearer {first.secret}"}
            ws = await s.ws_connect(running.url("/api/ws"), headers=auth)
            await ws.send_str("before")
            assert (await ws.receive()).data == "before"

            # The admin port answers all through the wave.
            admin_answers: list[int] = []
            wave_done = asyncio.Event()

            async def probe() -> None:
                while not wave_done.is_set():
                    for path in ("/healthz", "/metrics"):
                        async with s.get(running.admin_url(path)) as resp:
                            await resp.read()
                            admin_answers.append(resp.status)
                    await asyncio.sleep(0.02)

            prober = asyncio.create_task(probe())
            clients = list(await asyncio.gather(*(_client(port) for _ in range(WAVE))))
            wave_done.set()
            await prober
            assert admin_answers and set(admin_answers) == {200}, admin_answers

            served = [c for c in clients if c.answer.status == 200]
            refused = [c for c in clients if c.answer.status != 200]
            # Exactly the ceiling is held (the partner's two and the wave's first), every
            # other client is refused cleanly: no reset, no silence.
            assert len(served) == ceiling - 2
            assert len(refused) == WAVE - len(served)
            for c in refused:
                assert c.answer.status == 503
                assert json.loads(c.answer.body)["error"]["code"] == "too_many_connections"
                assert c.answer.headers["retry-after"] == "5"
                assert c.answer.headers["connection"] == "close"
                assert c.answer.headers["content-type"] == "application/json"

            # At capacity: the partner's next request needs Clerk (a token not seen yet)
            # and the upstream, and gets both; its WebSocket still relays.
            calls = sum(emulator.calls.values())
            answer = await _ask(reader, writer, "/api/y", second.secret)
            assert answer.status == 200 and answer.body == b"ok"
            assert sum(emulator.calls.values()) == calls + 1
            assert seen[-1] == partner.id
            await ws.send_str("at capacity")
            assert (await ws.receive()).data == "at capacity"
            # A new WebSocket upgrade is refused the same way.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
                await s.ws_connect(running.url("/api/ws"), headers=auth)
            assert refusal.value.status == 503

            async with s.get(running.admin_url("/healthz")) as resp:
                assert resp.status == 200
            async with s.get(running.admin_url("/metrics")) as resp:
                text = await resp.text()
            assert _metric(text, "authproxy_client_connections") == ceiling
            assert _metric(text, "authproxy_client_connections_ceiling") == ceiling
            closed = 'authproxy_connections_closed_total{reason="ceiling"}'
            assert _metric(text, closed) == len(refused) + 1

            # The wave leaves; new clients are served again.
            for c in served:
                c.writer.close()
            for _ in range(int(PATIENCE / 0.05)):
                async with s.get(running.admin_url("/metrics")) as resp:
                    if _metric(await resp.text(), "authproxy_client_connections") == 2:
                        break
                await asyncio.sleep(0.05)
            again = await asyncio.gather(*(_client(port) for _ in range(100)))
            clients += again
            assert [c.answer.status for c in again] == [200] * 100
            await ws.close()
            writer.close()
    finally:
        for c in clients:
            c.writer.close()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    errors = [x for x in running.lines if x.get("level") in ("error", "critical")]
    assert not errors, errors


async def test_max_client_connections_binds_and_a_reload_moves_the_ceiling(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    upstream = await aiohttp_server(_upstream([]))
    port, admin = unused_port(), unused_port()
    config = tmp_path / "c.yaml"

    def write(ceiling: int) -> None:
        raw = config_dict(
            str(upstream.make_url("")).rstrip("/"),
            listen={"port": port},
            admin={"port": admin},
            connections={"max_client_connections": ceiling},
        )
        raw["clerk"]["secret_key"] = "${CLERK_SECRET_KEY}"
        config.write_text(yaml.safe_dump(raw))

    write(3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "run", "--config", str(config),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "CLERK_SECRET_KEY": "sk_test_unit"},
    )
    running = Running(proc, port, admin)
    clients: list[Client] = []
    try:
        assert (await running.wait_log("file descriptors"))["client_connections_ceiling"] == 3
        await running.wait_log("serving")
        for _ in range(4):
            clients.append(await _client(port))
        assert [c.answer.status for c in clients] == [200, 200, 200, 503]
        write(5)
        proc.send_signal(signal.SIGHUP)
        await running.wait_log("config reloaded")
        async with aiohttp.ClientSession() as s, s.get(running.admin_url("/metrics")) as resp:
            assert _metric(await resp.text(), "authproxy_client_connections_ceiling") == 5
        for _ in range(3):
            clients.append(await _client(port))
        assert [c.answer.status for c in clients[4:]] == [200, 200, 503]
    finally:
        for c in clients:
            c.writer.close()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
