"""The fast path's two state machines (`frontdoor.FrontDoor`, `upstream.UpstreamConnection`):
each table walked through the one method that changes state (every transition it lists is
taken, every other one raises), and the states a real exchange leaves behind."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from proxy.core.transitions import IllegalTransition
from proxy.fastpath import frontdoor
from proxy.http import upstream
from proxy.http.upstream import UpstreamConnection, UpstreamPool
from proxy.request.app import PROXY
from tests import test_fastpath
from tests.test_fastpath import _front, connect, fast_proxy, get, recording_upstream

servers = test_fastpath.servers  # the fixture: what a test starts, stopped after it

# Transitions that would be the bugs a table exists to catch, each named.
DOOR_ILLEGAL = [
    # An answer begun, then a second status for the same exchange.
    (frontdoor.STREAMING, frontdoor.SENT),
    (frontdoor.STREAMING, frontdoor.HELD),
    # An upstream's answer reaching a connection between exchanges: the cross-client answer.
    (frontdoor.READING, frontdoor.HELD),
    (frontdoor.READING, frontdoor.RELAYING),
    (frontdoor.READING, frontdoor.STREAMING),
    (frontdoor.CLOSING, frontdoor.RELAYING),
    (frontdoor.CLOSED, frontdoor.RELAYING),
    # A connection aiohttp owns, or one that is gone, served again.
    (frontdoor.HANDED_OFF, frontdoor.ROUTING),
    (frontdoor.HANDED_OFF, frontdoor.CLOSED),
    (frontdoor.CLOSED, frontdoor.READING),
    (frontdoor.CLOSING, frontdoor.READING),
    # A held answer is written whole at its end, never streamed.
    (frontdoor.HELD, frontdoor.STREAMING),
    # Authentication skipped or repeated once an upstream is involved.
    (frontdoor.SENT, frontdoor.AUTHENTICATING),
    (frontdoor.READING, frontdoor.SENT),
    # Handed to aiohttp mid-exchange, with bytes of an answer already sent upstream.
    (frontdoor.SENT, frontdoor.HANDED_OFF),
    (frontdoor.AUTHENTICATING, frontdoor.HANDED_OFF),
]
UPSTREAM_ILLEGAL = [
    # A second request on a connection whose exchange is open (pipelined upstream).
    (upstream.SENT, upstream.SENT),
    (upstream.BODY, upstream.SENT),
    # Back to the pool before the answer ended, or after it broke framing.
    (upstream.BODY, upstream.IDLE),
    (upstream.HEAD, upstream.IDLE),
    (upstream.BROKEN, upstream.IDLE),
    # An answer without a request.
    (upstream.IDLE, upstream.HEAD),
    (upstream.IDLE, upstream.BODY),
    # A closed connection reused.
    (upstream.CLOSED, upstream.IDLE),
    (upstream.CLOSED, upstream.SENT),
    # A head handed on twice.
    (upstream.BODY, upstream.HEAD),
]


def _walk(machine: Any, names: tuple[str, ...], table: dict[int, frozenset[int]]) -> int:
    """Every (old, new) pair through `_to`: taken when the table lists it, refused
    (state unchanged) otherwise. The number of legal transitions."""
    legal = 0
    for old, new in itertools.product(range(len(names)), repeat=2):
        machine._state = old
        if new in table[old]:
            machine._to(new)
            assert machine.state == new
            legal += 1
        else:
            with pytest.raises(IllegalTransition, match=f"{names[old]} -> {names[new]}"):
                machine._to(new)
            assert machine.state == old
    return legal


def test_tables_cover_every_state_once() -> None:
    for names, table in (
        (frontdoor.STATES, frontdoor.TRANSITIONS),
        (upstream.STATES, upstream.TRANSITIONS),
    ):
        assert sorted(table) == list(range(len(names)))
        assert all(new in table for targets in table.values() for new in targets)


async def test_upstream_connection_table_walked() -> None:
    pool = UpstreamPool("127.0.0.1", 9, connect_timeout=1.0, read_timeout=1.0)
    conn = UpstreamConnection(pool)
    assert conn.state == upstream.IDLE
    assert _walk(conn, upstream.STATES, upstream.TRANSITIONS) == sum(
        map(len, upstream.TRANSITIONS.values())
    )
    for old, new in UPSTREAM_ILLEGAL:
        assert new not in upstream.TRANSITIONS[old]


async def test_front_door_table_walked(servers: list[Any]) -> None:
    url, _, _ = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    door = frontdoor.FrontDoor(proxy.app[PROXY], _front(proxy).doorway)
    assert door.state == frontdoor.READING
    assert _walk(door, frontdoor.STATES, frontdoor.TRANSITIONS) == sum(
        map(len, frontdoor.TRANSITIONS.values())
    )
    for old, new in DOOR_ILLEGAL:
        assert new not in frontdoor.TRANSITIONS[old]
    # Closed and handed-off are the ends: nothing leaves them.
    assert not frontdoor.TRANSITIONS[frontdoor.CLOSED]
    assert not frontdoor.TRANSITIONS[frontdoor.HANDED_OFF]
    assert not upstream.TRANSITIONS[upstream.CLOSED]


def _doors(proxy: Any) -> list[frontdoor.FrontDoor]:
    return [c for c in _front(proxy).connections if isinstance(c, frontdoor.FrontDoor)]


async def test_exchanges_leave_the_door_reading_and_the_upstream_idle(servers: list[Any]) -> None:
    url, _, _ = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    client = await connect(proxy)
    await client.send(get("/public/a") + get("/public/b"))
    assert [r.status for r in await client.responses(2)] == [200, 200]
    (door,) = _doors(proxy)
    assert door.state == frontdoor.READING
    pool = proxy.app[PROXY].fast_pool
    assert pool.size == 1
    (conn,) = pool._idle
    assert conn.state == upstream.IDLE
    # A half-close between exchanges: nothing more is served.
    client.writer.write_eof()
    assert await client.closed()
    await asyncio.sleep(0)
    assert door.state in (frontdoor.CLOSING, frontdoor.CLOSED)


async def test_a_door_handed_to_aiohttp_is_left_alone(servers: list[Any]) -> None:
    url, _, _ = await recording_upstream(servers)
    proxy = await fast_proxy(servers, url)
    client = await connect(proxy)
    await client.send(get("/public/a"))
    (resp,) = await client.responses(1)
    assert resp.status == 200
    (door,) = _doors(proxy)
    # A partial head is aiohttp's to wait for.
    await client.send(b"GET /public/b HTTP/1.1\r\nHost: proxy.test\r\n")
    for _ in range(100):
        if door.state != frontdoor.READING:
            break
        await asyncio.sleep(0.01)
    assert door.state == frontdoor.HANDED_OFF
    await client.send(b"\r\n")
    (resp,) = await client.responses(1)
    assert resp.status == 200
    assert door.state == frontdoor.HANDED_OFF
