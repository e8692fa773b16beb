"""Reading an answer body with a size cap: the Clerk client and the other issuers' calls
both refuse an answer past their bound rather than buffer it whole."""

from __future__ import annotations

import aiohttp


async def read_capped(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
