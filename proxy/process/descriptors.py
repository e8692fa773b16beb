"""The process's file descriptors, raised to what it may have.

A client connection costs the proxy two descriptors (the client's and the upstream's), a
WebSocket or Socket.IO partner holds them for hours, and the soft `RLIMIT_NOFILE` most
hosts and container runtimes start a process with is 1,024: left there, about 500
partners fill the process, and then the admin port, Clerk and Redis cannot get one
either. The hard limit is what the operator granted; the soft one is only a default, so
the process takes the hard one at start (as nginx's `worker_rlimit_nofile` and Envoy's
start-up do) and says so.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable

log = logging.getLogger("proxy")

# An unlimited hard limit cannot be the soft one (the kernel's nr_open bounds it).
_NR_OPEN = "/proc/sys/fs/nr_open"
_FALLBACK_CEILING = 1 << 20


def _ceiling(hard: int) -> int:
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open(_NR_OPEN) as f:
            return int(f.read())
    except (OSError, ValueError):
        return _FALLBACK_CEILING


def raise_to_hard_limit(ceiling: Callable[[int], int] | None = None) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; the (soft, hard) in force after, as
    logged. `ceiling`, given the soft limit, derives the client-connection ceiling from
    it, logged on the same line (`connections.descriptor_reserve`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _ceiling(hard)
    before = soft
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning(
                "could not raise the file descriptor limit",
                extra={"soft": soft, "hard": hard, "error": type(exc).__name__},
            )
    fields = {"soft_before": before, "soft": soft, "hard": hard}
    level = logging.INFO
    if ceiling is not None:
        fields["client_connections_ceiling"] = held = ceiling(soft)
        if held == 0:  # the reserve takes every descriptor: every client is refused
            level = logging.WARNING
    log.log(level, "file descriptors", extra=fields)
    return soft, hard
