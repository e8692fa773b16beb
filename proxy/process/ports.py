"""Binding the listeners: a port that cannot be had is one log line and exit code 2.

A bind failure names the address, the config key to change (`listen.port`, `admin.host`,
…) and the environment variable the file reads it from (`PROXY_PORT`), instead of a
traceback. `probe` checks an address before `--workers` starts N processes that would
each fail the same way.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

log = logging.getLogger("proxy")

T = TypeVar("T")


class ListenError(Exception):
    """An address the process cannot listen on, with what to change: `key` is the config
    key of the port (`listen`: `listen.port`, or `listen.host` when the host is at fault),
    or one key for both (`upstream.url`)."""

    def __init__(
        self,
        host: str,
        port: int,
        key: str,
        exc: OSError,
        variables: Mapping[str, tuple[str, ...]],
    ) -> None:
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if "." not in key:
            # A port taken or forbidden is the port's fault; no such local address, the host's.
            host_fault = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
            key = f"{key}.host" if host_fault else f"{key}.port"
        self.key = key
        # asyncio's strerror repeats the address ("error while attempting to bind on …").
        code = exc.errno or 0
        self.reason = (os.strerror(code) if code > 0 else exc.strerror or str(exc)).lower()
        self.errno = errno.errorcode.get(exc.errno or 0, "")
        self.variables = variables.get(key, ())
        super().__init__(f"cannot listen on {self.address} ({self.key}): {self.reason}")

    def log(self) -> None:
        extra: dict[str, object] = {
            "address": self.address,
            "key": self.key,
            "reason": self.reason,
            "errno": self.errno,
        }
        if self.variables:
            extra["env"] = self.variables[0]
        log.error("cannot listen: %s", self.reason, extra=extra)


async def bind(
    start: Callable[[], Awaitable[T]],
    host: str,
    port: int,
    key: str,
    variables: Mapping[str, tuple[str, ...]],
) -> T:
    """`start()`, with an OSError turned into a ListenError naming `key`."""
    try:
        return await start()
    except OSError as exc:
        raise ListenError(host, port, key, exc, variables) from None


def probe(host: str, port: int, key: str, variables: Mapping[str, tuple[str, ...]]) -> None:
    """Bind (as asyncio's servers do, with SO_REUSEADDR) and let go at once; raises
    ListenError. Port 0 always binds."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        raise ListenError(host, port, key, exc, variables) from None
