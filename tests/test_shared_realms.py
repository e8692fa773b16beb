"""Issue 26, row 1: proxies on one Redis and one Clerk instance whose configs would judge a
token differently never adopt each other's verdicts from the shared level. Real Redis,
the Clerk emulator and issuer emulators on real sockets, each proxy with its own config,
verifier, cache and Redis connections."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from proxy.config.load import build_config
from proxy.emulator.app import ClerkEmulator
from proxy.emulator.issuer_app import IssuerEmulator
from proxy.emulator.issuer_state import OPAQUE_PREFIX
from proxy.request.app import PROXY, create_app
from tests.support import Recorder, config_dict, upstream_app
from tests.support_issuers import token_for
from tests.support_redis import Server, redis_binary
from tests.test_shared_level import metric

SECRET = "sk_test_realms"
API_1 = "https://api-1.example"
API_2 = "https://api-2.example"

pytestmark = pytest.mark.skipif(
    redis_binary() is None, reason="redis-server is not installed (make test installs it)"
)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(redis_binary() or "", tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@dataclass
class Rig:
    clerk: ClerkEmulator
    clerk_url: str
    upstream_url: str
    redis_url: str
    client: aiohttp.ClientSession
    serve: Any

    async def issuer(self) -> IssuerEmulator:
        emu = IssuerEmulator()
        server = await self.serve(emu.app)
        emu.issuer = str(server.make_url("")).rstrip("/")
        emu.add_client("scores-api", resources={}, client_secret="rs-secret")  # the API itself
        return emu

    async def proxy(self, issuers: list[dict[str, Any]] | None = None, **clerk: Any) -> TestServer:
        raw = config_dict(self.upstream_url)
        raw["clerk"] = {"api_url": self.clerk_url, "secret_key": SECRET, **clerk}
        raw["cache"] = {"shared": {"url": self.redis_url, "timeout": 0.5}}
        raw["issuers"] = issuers or []
        return await self.serve(create_app(build_config(raw, file="realms.yaml")))

    async def get(self, proxy: TestServer, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.client.get(proxy.make_url("/api/x"), headers=headers) as resp:
            await resp.read()
            return resp.status


def introspected(emu: IssuerEmulator, audiences: list[str]) -> dict[str, Any]:
    return {
        "name": "partners",
        "preset": "authgear",
        "issuer": emu.issuer,
        "audiences": audiences,
        "introspection": {
            "client_id": "scores-api",
            "client_secret": "rs-secret",
            "token_prefix": OPAQUE_PREFIX,
        },
    }


async def opaque(rig: Rig, emu: IssuerEmulator, client_id: str, resource: str) -> str:
    client = emu.add_client(
        client_id, resources={resource: ("scores:read",)}, token_format="opaque"
    )
    return await token_for(rig.client, emu.issuer, client.client_id, client.client_secret, resource)


def shared_hits(proxy: TestServer) -> float:
    text = proxy.app[PROXY].metrics.render().decode()
    return metric(text, "authproxy_shared_cache_lookups_total", result="hit") + metric(
        text, "authproxy_shared_cache_lookups_total", result="negative_hit"
    )


@pytest.fixture
async def rig(aiohttp_server: Any, redis_server: Server) -> AsyncIterator[Rig]:
    clerk = ClerkEmulator(SECRET)
    clerk_server = await aiohttp_server(clerk.app)
    upstream = await aiohttp_server(upstream_app(Recorder()))
    redis = Redis.from_url(redis_server.url)
    await redis.flushall()
    await redis.aclose()
    async with aiohttp.ClientSession() as client:
        yield Rig(
            clerk,
            str(clerk_server.make_url("")).rstrip("/"),
            str(upstream.make_url("")).rstrip("/"),
            redis_server.url,
            client,
            aiohttp_server,
        )


async def test_a_verdict_for_another_audience_is_not_adopted(rig: Rig) -> None:
    """The issue's attack: proxy 2 (`audiences: [api-2]`) answered 200 to a token for api-1
    that proxy 1 had accepted, without asking the issuer."""
    emu = await rig.issuer()
    one = await rig.proxy([introspected(emu, [API_1])])
    two = await rig.proxy([introspected(emu, [API_2])])
    token = await opaque(rig, emu, "svc-1", API_1)
    assert await rig.get(one, token) == 200
    assert await rig.get(two, token) == 401  # the issuer says aud is api-1
    assert emu.calls["introspect"] == 2
    # The other way round: proxy 2's rejection does not lock proxy 1's client out.
    other = await opaque(rig, emu, "svc-2", API_1)
    assert await rig.get(two, other) == 401
    assert await rig.get(one, other) == 200
    assert emu.calls["introspect"] == 4
    assert shared_hits(one) == shared_hits(two) == 0
    # Within one realm sharing still works: a third proxy configured as proxy 1 asks nobody.
    three = await rig.proxy([introspected(emu, [API_1])])
    assert await rig.get(three, token) == 200
    assert emu.calls["introspect"] == 4
    assert shared_hits(three) == 1


async def test_another_issuer_behind_the_same_name_and_prefix_is_not_trusted(rig: Rig) -> None:
    """A proxy that does not trust the issuer that made the token (its `partners` is another
    tenant, with the same token prefix) never sees the first one's verdict."""
    real, other = await rig.issuer(), await rig.issuer()
    one = await rig.proxy([introspected(real, [API_1])])
    elsewhere = await rig.proxy([introspected(other, [API_1])])
    token = await opaque(rig, real, "svc-1", API_1)
    assert await rig.get(one, token) == 200
    assert await rig.get(elsewhere, token) == 401  # its issuer never made this token
    assert other.calls["introspect"] == 1
    # A proxy serving no issuer refuses the token's shape before any shared lookup.
    clerk_only = await rig.proxy()
    assert await rig.get(clerk_only, token) == 401
    assert shared_hits(clerk_only) == 0 and real.calls["introspect"] == 1


async def test_a_config_rollout_starts_a_new_realm(rig: Rig) -> None:
    """Entries written under the config before a rollout are not the new config's: here
    the new one requires a claim the token lacks."""
    emu = await rig.issuer()
    before = await rig.proxy([introspected(emu, [API_1])])
    token = await opaque(rig, emu, "svc-1", API_1)
    assert await rig.get(before, token) == 200
    stricter = {**introspected(emu, [API_1]), "claims": {"require": {"tenant": "acme"}}}
    after = await rig.proxy([stricter])
    assert await rig.get(after, token) == 401
    assert emu.calls["introspect"] == 2


async def test_clerk_verdicts_are_per_verifying_config(rig: Rig) -> None:
    """Two proxies of one Clerk instance, one verifying M2M tokens with the instance key and
    one with its own machine's key (which sees only tokens granted to that machine): the
    first one's 200 for a token not granted to the second one's machine is not the
    second one's."""
    api = rig.clerk.create_machine("scores-api")
    partner = rig.clerk.create_machine("partner")  # granted access to nothing
    token = rig.clerk.create_m2m_token(partner.id)
    instance = await rig.proxy()
    machine = await rig.proxy(machine_secret_key=api.secret_key)
    assert await rig.get(instance, token.secret) == 200
    assert await rig.get(machine, token.secret) == 401
    assert rig.clerk.calls["m2m_verify"] == 2
    # Proxies with the same Clerk config still share.
    twin = await rig.proxy()
    assert await rig.get(twin, token.secret) == 200
    assert rig.clerk.calls["m2m_verify"] == 2
