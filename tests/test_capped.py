"""`read_capped`: the whole body up to the cap, None one byte past it."""

from __future__ import annotations

import asyncio
from unittest import mock

import aiohttp
import pytest

from proxy.auth.gate import read_capped


def _body(data: bytes) -> aiohttp.StreamReader:
    reader = aiohttp.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    for start in range(0, len(data), 1000):
        reader.feed_data(data[start : start + 1000])
    reader.feed_eof()
    return reader


@pytest.mark.parametrize(
    ("size", "limit", "whole"),
    [(0, 10, True), (10, 10, True), (11, 10, False), (200_000, 200_000, True), (200_001, 200_000, False)],
)
async def test_the_cap_is_inclusive(size: int, limit: int, whole: bool) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert await read_capped(_body(data), limit) == (data if whole else None)
