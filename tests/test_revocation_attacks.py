"""Issue 26, revocation rows, attacked from outside: `clerk-auth-proxy run` processes on a
real redis-server, the attacker holding only a Redis connection (rows 3, 4, 9, 10) or the
operator's CLI (rows 7, 15, 16); row 5 with a second issuer beside Clerk.

- 3, 4: 100,000 forged revocation messages neither push a live revocation out nor stall
  the event loop (a cached token's p99 stays under 50 ms while they arrive).
- 9: revocations are MAC'd like entries: a forged member or message revokes nothing, and
  an `until` of Infinity is refused.
- 10: Redis restarted empty: a process that kept running writes its live revocations back,
  so a process started afterwards refuses the revoked token.
- 5: a revocation names its issuer; revoking Clerk's `mch_x` leaves another issuer's
  `mch_x` alone.
- 7: `revoke --token-id <the token's secret>` is refused without storing or echoing it.
- 15: `POST /revoke` is not on the admin (scrape) port.
- 16: a revocation that did not propagate exits non-zero.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from proxy.emulator.app import ClerkEmulator
from proxy.process.admin import create_control_app
from proxy.request.app import PROXY
from tests.support import Recorder, upstream_app
from tests.support_issuers import API, IssuerStack, issuer_stack
from tests.support_redis import Server, redis_binary
from tests.test_process import ROOT, Running, start, write_config
from tests.test_shared_level import metric

__all__ = ["issuer_stack"]  # the fixture, used by name

SECRET = "sk_test_unit"  # what tests.test_process.start puts in the environment
REVOKE_SECRET = "attack-revoke-secret-0123"

needs_redis = pytest.mark.skipif(
    redis_binary() is None, reason="redis-server is not installed (make test installs it)"
)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Server]:
    server = Server(redis_binary() or "", tmp_path / "redis").start()
    yield server
    server.stop()


class Fleet:
    def __init__(self, emulator: ClerkEmulator, clerk_url: str, upstream: str, tmp: Path) -> None:
        self.emulator, self.clerk_url, self.upstream, self.tmp = emulator, clerk_url, upstream, tmp
        self.nodes: list[Running] = []
        self.client = aiohttp.ClientSession()

    async def node(self, redis_url: str | None, **overrides: Any) -> Running:
        path = self.tmp / f"node{len(self.nodes)}.yaml"
        if redis_url is not None:
            overrides["cache"] = {"shared": {"url": redis_url, "timeout": 0.2, "resync_seconds": 0.5}}
        ports = write_config(
            path,
            self.upstream,
            clerk={"api_url": self.clerk_url, "secret_key": SECRET},
            revocation={"secret": REVOKE_SECRET},
            logging={"access_log": False},
            **overrides,
        )
        running = await start(path, *ports)
        self.nodes.append(running)
        return running

    async def get(self, node: Running, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.client.get(node.url("/api/x"), headers=headers) as resp:
            await resp.read()
            return resp.status

    async def revoke(self, node: Running, **body: Any) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {REVOKE_SECRET}"}
        async with self.client.post(revoke_url(node), json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def until_status(self, node: Running, token: str, want: int, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await self.get(node, token) == want:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"never {want}")


def revoke_url(node: Running) -> str:
    return node.control_url("/revoke")


@pytest.fixture
async def fleet(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Fleet]:
    emulator = ClerkEmulator(SECRET)
    clerk = await aiohttp_server(emulator.app)
    upstream = await aiohttp_server(upstream_app(Recorder()))
    f = Fleet(
        emulator,
        str(clerk.make_url("")).rstrip("/"),
        str(upstream.make_url("")).rstrip("/"),
        tmp_path,
    )
    yield f
    await f.client.close()
    for node in f.nodes:
        if node.proc.returncode is None:
            node.proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*(asyncio.wait_for(n.proc.wait(), 30) for n in f.nodes))


async def _channel_and_set(redis: Redis) -> tuple[bytes, bytes]:
    """What an attacker with a Redis connection sees: the proxies' channel and the set."""
    for _ in range(100):
        channels = await redis.pubsub_channels()
        if channels:
            break
        await asyncio.sleep(0.05)
    assert len(channels) == 1, channels
    # The set sits beside the channel, under the same namespace (the code is public).
    return channels[0], channels[0].removesuffix(b":events") + b":{revoked}"


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.process.cli", "revoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- rows 3 and 4


FLOOD = textwrap.dedent(
    """
    import json, os, sys, time
    from redis import Redis
    os.nice(10)  # the attacker's CPU is not the proxy's: on a shared box, let it yield
    url, channel, key, count = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode(), int(sys.argv[4])
    r = Redis.from_url(url)
    until = time.time() + 9 * 365 * 86400
    pipe = r.pipeline(transaction=False)
    for n in range(count):
        body = {"kind": "token_id", "value": "mt_%032x" % n, "until": until}
        pipe.publish(channel, b"R" + json.dumps(body).encode())
        pipe.zadd(key, {"token_id:mt_%032x" % n: until})
        if n % 1000 == 999:
            pipe.execute()
    # The attacker also takes the real revocation out of the set.
    for member in r.zrange(key, 0, -1):
        if not member.startswith(b"token_id:mt_000"):
            pipe.zrem(key, member)
    pipe.execute()
    """
)


@needs_redis
async def test_a_flood_of_forged_revocations_loses_no_live_one_and_stalls_no_cached_token(
    fleet: Fleet, redis_server: Server
) -> None:
    node = await fleet.node(redis_server.url)
    machine = fleet.emulator.create_machine("partner").id
    revoked, cached = (fleet.emulator.create_m2m_token(machine) for _ in range(2))
    assert await fleet.get(node, revoked.secret) == 200
    assert await fleet.get(node, cached.secret) == 200
    status, body = await fleet.revoke(node, token_id=revoked.id)
    assert status == 200, body
    assert await fleet.get(node, revoked.secret) == 401
    redis = Redis.from_url(redis_server.url)
    try:
        channel, key = await _channel_and_set(redis)
        flood = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FLOOD, redis_server.url, channel.decode(), key.decode(), "100000",
            cwd=ROOT,
        )  # fmt: skip
        latencies: list[float] = []
        while flood.returncode is None:
            started = time.perf_counter()
            assert await fleet.get(node, cached.secret) == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
        assert await flood.wait() == 0
        # What the process still has to read once the attacker is done counts as well.
        for _ in range(200):
            started = time.perf_counter()
            assert await fleet.get(node, cached.secret) == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
        # The process did read the flood (its subscription was not dropped), and the
        # forged members are gone from the set.
        for _ in range(200):
            async with fleet.client.get(node.admin_url("/metrics")) as resp:
                text = await resp.text()
            heard = metric(text, "authproxy_revocations_refused_total", source="message")
            if heard == 100_000:
                break
            await asyncio.sleep(0.05)
        assert heard == 100_000, heard
        assert await redis.zcard(key) == 1  # the real one, written back
        # No live revocation lost, here or for a process started now.
        assert await fleet.get(node, revoked.secret) == 401
        late = await fleet.node(redis_server.url)
        assert await fleet.get(late, revoked.secret) == 401
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)]
        print(f"cached token under the flood: p99 {p99 * 1000:.1f} ms over {len(latencies)} requests")
        assert p99 < 0.050, f"p99 {p99 * 1000:.1f} ms over {len(latencies)} requests"
    finally:
        await redis.aclose()


# -- row 9


@needs_redis
async def test_a_forged_revocation_in_redis_revokes_nothing(
    fleet: Fleet, redis_server: Server
) -> None:
    node = await fleet.node(redis_server.url)
    machine = fleet.emulator.create_machine("partner").id
    by_id, by_subject = (fleet.emulator.create_m2m_token(machine) for _ in range(2))
    assert await fleet.get(node, by_id.secret) == 200
    redis = Redis.from_url(redis_server.url)
    try:
        channel, key = await _channel_and_set(redis)
        await redis.zadd(key, {f"token_id:{by_id.id}": float("inf"), f"subject:{machine}": 4e9})
        await redis.publish(channel, b'R{"kind":"token_id","value":"%s","until":Infinity}' % by_id.id.encode())
        await redis.publish(channel, b'R{"kind":"subject","value":"%s","until":4e9}' % machine.encode())
        await asyncio.sleep(1.5)  # three resyncs, and the messages
        assert await fleet.get(node, by_id.secret) == 200
        assert await fleet.get(node, by_subject.secret) == 200
        late = await fleet.node(redis_server.url)
        assert await fleet.get(late, by_id.secret) == 200
        # The forged members are gone from the set, and counted.
        assert await redis.zcard(key) == 0
        async with fleet.client.get(node.admin_url("/metrics")) as resp:
            text = await resp.text()
        assert metric(text, "authproxy_revocations_refused_total", source="message") == 2
        assert metric(text, "authproxy_revocations_refused_total", source="resync") >= 2
    finally:
        await redis.aclose()


# -- row 10


@needs_redis
async def test_redis_restarted_empty_gets_the_live_revocations_back(
    fleet: Fleet, redis_server: Server
) -> None:
    node = await fleet.node(redis_server.url)
    token = fleet.emulator.create_m2m_token(fleet.emulator.create_machine("partner").id)
    assert await fleet.get(node, token.secret) == 200
    status, body = await fleet.revoke(node, token_id=token.id)
    assert status == 200 and body["propagated"], body
    redis = Redis.from_url(redis_server.url)
    _, key = await _channel_and_set(redis)
    (member,) = await redis.zrange(key, 0, -1)
    # Signed, and naming whose token it is (row 5 in Redis): r1 <tag> <until> clerk token_id <id>
    assert member.startswith(b"r1 ") and member.endswith(f" clerk token_id {token.id}".encode())
    await redis.aclose()
    redis_server.stop(kill=True)
    redis_server.start()  # same port, nothing kept
    redis = Redis.from_url(redis_server.url)
    try:
        for _ in range(100):
            if [k async for k in redis.scan_iter(match="*{revoked}*")]:
                break
            await asyncio.sleep(0.05)
        late = await fleet.node(redis_server.url)
        assert await fleet.get(late, token.secret) == 401
        assert await fleet.get(node, token.secret) == 401
    finally:
        await redis.aclose()


@needs_redis
async def test_a_process_started_while_redis_is_slow_refuses_a_revoked_token_from_its_first_request(
    fleet: Fleet, redis_server: Server
) -> None:
    """Found by a CI run of the flood test: a process started after a revocation served the
    revoked token once, because its listener opened before it had read the set. Redis held
    still (CLIENT PAUSE) while the process starts makes that window as wide as the pause."""
    node = await fleet.node(redis_server.url)
    token = fleet.emulator.create_m2m_token(fleet.emulator.create_machine("partner").id)
    status, body = await fleet.revoke(node, token_id=token.id)
    assert status == 200 and body["propagated"], body
    redis = Redis.from_url(redis_server.url)
    try:
        await redis.execute_command("CLIENT", "PAUSE", "2500", "ALL")
        shared = {"url": redis_server.url, "timeout": 0.2, "connect_timeout": 3.0}
        late = await fleet.node(None, cache={"shared": shared})
        assert await fleet.get(late, token.secret) == 401
    finally:
        await redis.aclose()


# -- row 7


@needs_redis
async def test_revoking_a_secret_as_a_token_id_is_refused_and_the_secret_goes_nowhere(
    fleet: Fleet, redis_server: Server, tmp_path: Path
) -> None:
    node = await fleet.node(redis_server.url)
    machine = fleet.emulator.create_machine("partner").id
    token = fleet.emulator.create_m2m_token(machine)
    key = fleet.emulator.create_api_key(machine)
    assert await fleet.get(node, token.secret) == 200
    secret_file = tmp_path / "revoke-secret"
    secret_file.write_text(REVOKE_SECRET)
    redis = Redis.from_url(redis_server.url)
    listener = redis.pubsub()
    await listener.psubscribe("*")
    try:
        for leaked in (token.secret, key):
            done = _run_cli("--admin-url", revoke_url(node).removesuffix("/revoke"),
                            "--secret-file", str(secret_file), "--token-id", leaked)  # fmt: skip
            assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
            assert "its id" in done.stderr
            assert leaked not in done.stdout + done.stderr
        # And straight to the endpoint (not through the CLI): refused, not echoed.
        status, body = await fleet.revoke(node, token_id=token.secret)
        assert status == 400 and body["error"]["code"] == "bad_request", body
        assert token.secret not in json.dumps(body) and "its id" in body["error"]["message"]
        assert await fleet.get(node, token.secret) == 200
        stored = [k async for k in redis.scan_iter()]
        members = [m for k in stored if b"{revoked}" in k for m in await redis.zrange(k, 0, -1)]
        heard = []
        while (message := await listener.get_message(timeout=0.2)) is not None:
            heard.append(message.get("data"))
        for leaked in (token.secret, key):
            assert not any(leaked.encode() in m for m in members + stored)
            assert not any(isinstance(d, bytes) and leaked.encode() in d for d in heard)
            assert not any(leaked in json.dumps(line) for line in node.lines)
    finally:
        await listener.aclose()
        await redis.aclose()


# -- row 16


async def test_a_revocation_that_did_not_propagate_exits_non_zero(
    fleet: Fleet, tmp_path: Path
) -> None:
    node = await fleet.node(None)  # no shared level: this process only
    token = fleet.emulator.create_m2m_token(fleet.emulator.create_machine("partner").id)
    secret_file = tmp_path / "revoke-secret"
    secret_file.write_text(REVOKE_SECRET)
    done = _run_cli("--admin-url", revoke_url(node).removesuffix("/revoke"),
                    "--secret-file", str(secret_file), "--token-id", token.id)  # fmt: skip
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert "NOT propagated" in done.stderr
    assert json.loads(done.stdout)["propagated"] is False
    assert await fleet.get(node, token.secret) == 401  # applied here all the same


# -- row 15


async def test_revoke_is_not_on_the_scrape_port(fleet: Fleet) -> None:
    node = await fleet.node(None)
    token = fleet.emulator.create_m2m_token(fleet.emulator.create_machine("partner").id)
    headers = {"Authorization": f"Bearer {REVOKE_SECRET}"}
    async with fleet.client.post(
        node.admin_url("/revoke"), json={"token_id": token.id}, headers=headers
    ) as resp:
        assert resp.status == 404
    assert await fleet.get(node, token.secret) == 200
    async with fleet.client.get(node.admin_url("/metrics")) as resp:
        assert resp.status == 200


# -- row 5


async def test_a_revocation_names_its_issuer(
    issuer_stack: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    s: IssuerStack = await issuer_stack(revocation={"secret": REVOKE_SECRET})
    control = await aiohttp_server(create_control_app(s.proxy.app[PROXY]))
    machine = s.clerk.create_machine("partner").id
    clerk_token = s.clerk.create_m2m_token(machine)
    emu = s.issuers["authgear"]
    now = int(time.time())
    # Another issuer's principal that happens to carry the same subject and token id.
    foreign = emu.mint(
        {"iss": emu.issuer, "aud": API, "iat": now, "exp": now + 600, "jti": clerk_token.id,
         "client_id": machine, "sub": machine, "scope": "scores:read"}
    )  # fmt: skip

    async def status(token: str) -> int:
        return (await s.get("/api/v1/matches/today", token))[0]

    async def revoke(**body: Any) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {REVOKE_SECRET}"}
        async with s.client.post(control.make_url("/revoke"), json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    assert (await status(clerk_token.secret), await status(foreign)) == (200, 200)
    assert (await revoke(subject=machine))[0] == 200  # Clerk's machine: issuer defaults to clerk
    assert (await status(clerk_token.secret), await status(foreign)) == (401, 200)
    assert (await revoke(token_id=clerk_token.id))[0] == 200
    assert await status(foreign) == 200
    status_code, body = await revoke(subject=machine, issuer="authgear")
    assert status_code == 200 and body["revoked"]["issuer"] == "authgear", body
    assert await status(foreign) == 401
    assert (await revoke(subject=machine, issuer="nobody"))[0] == 400
    assert (await revoke(token_id=clerk_token.id, issuer="authgear", at_clerk=True))[0] == 400
    # Applied here, refused at Clerk: 502, with Clerk's side in the answer.
    s.clerk.set_fault("error", create=True, times=1)
    status_code, body = await revoke(token_id=clerk_token.id, at_clerk=True)
    assert status_code == 502 and body["error"]["code"] == "clerk_revoke_failed", body
    assert body["clerk"]["status"] == "failed" and body["clerk"]["http_status"] == 500, body
    # From a shell: --issuer names it, and the answer says whose.
    second = emu.mint(
        {"iss": emu.issuer, "aud": API, "iat": now, "exp": now + 600, "jti": "jti-second",
         "client_id": "svc-b", "sub": "svc-b", "scope": "scores:read"}
    )  # fmt: skip
    assert await status(second) == 200
    secret_file = tmp_path / "revoke-secret"
    secret_file.write_text(REVOKE_SECRET)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "revoke",
        "--url", str(control.make_url("")).rstrip("/"), "--secret-file", str(secret_file),
        "--token-id", "jti-second", "--issuer", "authgear",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 3  # no shared level in this stack: this process only
    assert json.loads(out)["revoked"]["issuer"] == "authgear"
    assert await status(second) == 401
