"""Issue 26, row 2: whatever "Redis" answers, a request is answered as if there were no
shared level — never a 5xx, never silence. `clerk-auth-proxy run` processes, one per
front door, with `cache.shared.url` on a fake RESP server (`support_resp`) that says what
no Redis says; the Clerk emulator as Clerk.

And the fast door's last resort: a failure inside the request path that is not a refusal
is answered 500 `internal_error` and logged, on both doors."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import unused_port

from proxy.emulator.app import ClerkEmulator
from proxy.request.app import create_app
from tests.support import Recorder, StubVerifier, config_dict, make_config, upstream_app
from tests.support_resp import HELLO3, NIL, FakeResp
from tests.test_process import Running, start
from tests.test_shared_level import metric

SECRET = "sk_test_unit"  # what tests.test_process.start puts in the environment

# What the fake says, phase by phase: (name, {command: reply}). Every phase drops the
# connections first, so that the handshake (HELLO 3) is asked again.
PHASES: list[tuple[str, dict[str, Any]]] = [
    # Something on the port that says OK to everything, HELLO included.
    ("hello_ok", {}),
    # A proper handshake, then scripts answering with an integer...
    ("script_integer", {"HELLO": HELLO3, "EVALSHA": b":1\r\n", "GET": NIL}),
    # ...with a one-element array...
    ("short_array", {"HELLO": HELLO3, "EVALSHA": b"*1\r\n$-1\r\n", "GET": NIL}),
    # ...with a lock flag that is no flag, and a RESP error for everything else.
    ("odd_array", {"HELLO": HELLO3, "EVALSHA": b"*2\r\n:7\r\n:7\r\n", "GET": b"-ERR odd\r\n"}),
    # A map where a string is expected.
    ("map", {"HELLO": HELLO3, "EVALSHA": b"%1\r\n+a\r\n+b\r\n", "GET": b"%1\r\n+a\r\n+b\r\n"}),
]


class Node:
    def __init__(self, running: Running, client: aiohttp.ClientSession) -> None:
        self.running, self.client = running, client

    async def get(self, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        # The bound only turns "no answer at all" into a failure instead of a hang.
        timeout = aiohttp.ClientTimeout(total=15)
        async with self.client.get(
            self.running.url("/api/x"), headers=headers, timeout=timeout
        ) as resp:
            await resp.read()
            return resp.status

    async def metric(self, name: str, **labels: str) -> float:
        async with self.client.get(self.running.admin_url("/metrics")) as resp:
            return metric(await resp.text(), name, **labels)


@pytest.fixture
async def nodes(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Running] = []
    fakes: list[FakeResp] = []

    async def build(fast_path: bool) -> tuple[Node, ClerkEmulator, FakeResp]:
        emulator = ClerkEmulator(SECRET)
        clerk = await aiohttp_server(emulator.app)
        upstream = await aiohttp_server(upstream_app(Recorder()))
        fake = await FakeResp({}).start()
        fakes.append(fake)
        port, admin = unused_port(), unused_port()
        raw = config_dict(
            str(upstream.make_url("")).rstrip("/"),
            listen={"port": port, "fast_path": fast_path},
            admin={"port": admin},
            clerk={
                "api_url": str(clerk.make_url("")).rstrip("/"),
                "secret_key": "${CLERK_SECRET_KEY}",
            },
            # Every call reaches the fake: the breaker would spare most of them.
            cache={"shared": {"url": fake.url, "timeout": 0.5, "breaker_failures": 1_000_000}},
            logging={"access_log": False},
        )
        path = tmp_path / f"fake-{int(fast_path)}.yaml"
        path.write_text(yaml.safe_dump(raw))
        running = await start(path, port, admin)
        started.append(running)
        client = aiohttp.ClientSession()
        clients.append(client)
        return Node(running, client), emulator, fake

    clients: list[aiohttp.ClientSession] = []
    yield build
    for c in clients:
        await c.close()
    for running in started:
        if running.proc.returncode is None:
            running.proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*(asyncio.wait_for(r.proc.wait(), 30) for r in started))
    for fake in fakes:
        await fake.close()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
async def test_no_reply_of_the_shared_level_becomes_a_5xx_or_silence(
    nodes: Any, fast_path: bool
) -> None:
    node, emulator, fake = await nodes(fast_path)
    machine = emulator.create_machine("partner").id
    for phase, answers in PHASES:
        fake.answers = answers
        await fake.drop()
        before = len(fake.received)
        fresh = emulator.create_m2m_token(machine).secret
        got = [await node.get(fresh), await node.get("mt_" + "x" * 48), await node.get(fresh)]
        assert got == [200, 401, 200], phase
        assert len(fake.received) > before, phase  # the fake was asked
    # Each odd reply was a failed call of its kind, not a request's error.
    assert await node.metric("authproxy_shared_cache_errors_total", op="fetch", kind="reply") > 0
    assert await node.metric("authproxy_shared_cache_errors_total", op="budget", kind="reply") > 0
    lines = node.running.lines
    assert not [line for line in lines if line.get("level") in ("error", "critical")], lines
    warned = [line for line in lines if line.get("msg", "").startswith("the shared cache gave")]
    assert warned and all(set(w) >= {"op", "error"} for w in warned)
    text = json.dumps(lines)
    assert "mt_" + "x" * 48 not in text


class Exploding(StubVerifier):
    """A verifier with a bug: every token it does not know raises what no refusal is."""

    def cached(self, token: str, recent: Any = None) -> Any:
        return None

    async def verify(self, token: str, client_ip: str) -> Any:
        raise TypeError("cannot unpack non-iterable int object (" + token + ")")


@pytest.fixture
async def exploding(aiohttp_server: Any, front_door: str) -> AsyncIterator[Any]:
    recorder = Recorder()
    upstream = await aiohttp_server(upstream_app(recorder))
    app = create_app(make_config(str(upstream.make_url("")).rstrip("/")), verifier=Exploding())
    yield await aiohttp_server(app), recorder


@pytest.mark.parametrize("front_door", ["fast", "aiohttp"], indirect=True)
async def test_a_failure_inside_the_request_path_is_a_logged_500_on_both_doors(
    exploding: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, recorder = exploding
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        token = "mt_" + "s" * 48
        writer.write(
            f"GET /api/x HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 500 "), head
        assert b"connection: close" in head.lower()
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = json.loads(await reader.readexactly(length))
        assert body["error"]["code"] == "internal_error"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # then the connection closes
    finally:
        writer.close()
    assert recorder.seen == []
    failures = [r for r in caplog.records if r.getMessage() == "request failed inside the proxy"]
    assert len(failures) == 1
    record = failures[0]
    assert record.error == "TypeError"  # type: ignore[attr-defined]
    assert "verify" in record.where  # type: ignore[attr-defined]
    # Its message quoted the token: nothing of it reaches the log record.
    assert token not in str(vars(record)) and record.exc_info is None
