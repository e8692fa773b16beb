"""A fake RESP server on loopback: it reads commands as a Redis client sends them and
answers each with whatever bytes its rule gives, so a test can make "Redis" say what no
real server would (`+OK` to `HELLO 3`, an integer from a script, a short array).

`answers` maps a command name (upper case; `CLIENT SETNAME` is "CLIENT", `EVALSHA` its own)
to raw RESP bytes, or to a function of the command's arguments returning them; a command
without a rule gets `default`. Every command received is kept in `received`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeAlias

from aiohttp.test_utils import unused_port

Answer: TypeAlias = bytes | Callable[[list[bytes]], bytes]

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
# What a real Redis 7 says to `HELLO 3`, trimmed to the fields redis-py reads.
HELLO3 = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class FakeResp:
    def __init__(self, answers: dict[str, Answer], *, default: bytes = OK) -> None:
        self.answers = answers
        self.default = default
        self.port = unused_port()
        self.received: list[list[bytes]] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def names(self) -> list[str]:
        return [command[0].decode().upper() for command in self.received if command]

    async def start(self) -> FakeResp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def drop(self) -> None:
        """Close every connection: the client's next command connects (and shakes hands)
        again."""
        for writer in list(self._writers):
            writer.close()
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                command = await _read_command(reader)
                if command is None:
                    return
                self.received.append(command)
                rule = self.answers.get(command[0].decode().upper(), self.default)
                writer.write(rule(command) if callable(rule) else rule)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(ConnectionError):
                writer.close()


async def _read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
    """One command: a RESP array of bulk strings (what every client sends)."""
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        raise ValueError("not a RESP array")
    parts = []
    for _ in range(int(line[1:])):
        size = await reader.readline()
        if not size.startswith(b"$"):
            raise ValueError("not a bulk string")
        data = await reader.readexactly(int(size[1:]) + 2)
        parts.append(data[:-2])
    return parts


class HeldReply:
    """A relay in front of a real server that passes every byte on at once, except the
    next reply after `hold(seconds)`, which it holds back that long: the command runs,
    and a client with a shorter timeout never reads what it said."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = unused_port()
        self._hold = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def hold(self, seconds: float) -> None:
        self._hold = seconds

    async def start(self) -> HeldReply:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if replies and self._hold:
                        held, self._hold = self._hold, 0.0
                        await asyncio.sleep(held)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (
            asyncio.ensure_future(pipe(reader, up_writer, False)),
            asyncio.ensure_future(pipe(up_reader, writer, True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
