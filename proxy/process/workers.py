"""`--workers N`: N independent processes sharing the listen port via SO_REUSEPORT.

Each worker is a full proxy with its own verification cache, so a token costs up to N
Clerk calls per TTL instead of one — unless `cache.shared` is configured, then the
workers share verification through it (see docs/performance.md). The parent serves the
admin port for all of them (`gateway`: one /metrics). The kernel spreads new
connections across workers. The parent only supervises: it forwards SIGTERM/SIGINT/SIGHUP,
and a worker that dies while nobody asked it to stop is logged (which one, and the signal
or exit code) and started again. Past `RESTART_LIMIT` restarts within `RESTART_WINDOW`
seconds the workers are crash-looping: the parent stops the others and exits 1, so the
pod restarts with Kubernetes' back-off instead of spinning. A worker that exits 2 (its
config or its port is wrong: restarting would not help) stops them all with 2.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Final

from proxy.config.model import Listen
from proxy.observe.logs import WORKER_ENV
from proxy.process.gateway import ADMIN_SOCKET_ENV, Gateway
from proxy.process.ports import ListenError

REUSE_PORT_ENV: Final = "CLERK_AUTH_PROXY_REUSE_PORT"
# Kubernetes' own restart back-off starts at 10 s: five deaths a minute is no transient.
RESTART_LIMIT: Final = 5
RESTART_WINDOW: Final = 60.0
# The exit code of a worker whose config or port is wrong (cli's "usage" code).
EXIT_USAGE: Final = 2
EXIT_CRASH_LOOP: Final = 1
POLL_SECONDS: Final = 0.1

log = logging.getLogger("proxy.workers")


def death_cause(returncode: int) -> dict[str, object]:
    """A worker's end for a log line: `{"signal": "SIGKILL"}` or `{"exit_code": 3}`."""
    if returncode < 0:
        try:
            return {"signal": signal.Signals(-returncode).name}
        except ValueError:
            return {"signal": f"signal {-returncode}"}
    return {"exit_code": returncode}


def exit_status(returncode: int) -> int:
    """A worker's status as the parent's own exit code: a signal `n` is `128 + n`, as a
    shell reports it, instead of Python's `256 - n` for a negative code."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """The workers of one `run --workers N` and what happens when one dies."""

    def __init__(self, count: int, spawn: Callable[[int], subprocess.Popen[bytes]]) -> None:
        self._spawn = spawn
        self._restarts: deque[float] = deque()
        self._count = count
        self.stopping = False
        self._stop_signal = 0
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.workers = [self._start(i) for i in range(self._count)]

    def _start(self, index: int) -> subprocess.Popen[bytes]:
        child = self._spawn(index)
        log.info("worker started", extra={"worker": index, "pid": child.pid})
        return child

    def signal_all(self, signum: int) -> None:
        for child in self.workers:
            if child.poll() is None:
                child.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if not self.stopping:
            self._stop_signal = signum
        self.stopping = True
        self.signal_all(signum)

    def check(self) -> int | None:
        """Restart the workers that died; the parent's exit code once it must end."""
        for index, child in enumerate(self.workers):
            code = child.poll()
            if code is None or self.stopping:
                continue
            cause = death_cause(code)
            if code == EXIT_USAGE:
                log.error(
                    "worker exited: its config or port is wrong; stopping the others",
                    extra={"worker": index, "pid": child.pid, **cause},
                )
                self.stop()
                return EXIT_USAGE
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > RESTART_WINDOW:
                self._restarts.popleft()
            if len(self._restarts) >= RESTART_LIMIT:
                log.error(
                    "workers are crash-looping; stopping",
                    extra={
                        "worker": index,
                        "pid": child.pid,
                        **cause,
                        "restarts": len(self._restarts),
                        "window_seconds": RESTART_WINDOW,
                    },
                )
                self.stop()
                return EXIT_CRASH_LOOP
            self._restarts.append(now)
            log.error(
                "worker died; restarting it", extra={"worker": index, "pid": child.pid, **cause}
            )
            self.workers[index] = self._start(index)
        return None

    def wait(self) -> int:
        """Supervise until every worker has ended; the parent's exit code."""
        verdict: int | None = None
        while True:
            if verdict is None:
                verdict = self.check()
            if self.stopping and all(child.poll() is not None for child in self.workers):
                break
            time.sleep(POLL_SECONDS)
        if verdict is not None:
            return verdict
        # Stopped on request: 0 when every worker drained cleanly, or ended by the signal
        # it was asked to stop with (one still starting has no handler for it yet).
        codes = [c.returncode or 0 for c in self.workers]
        return max((exit_status(c) for c in codes if c != -self._stop_signal), default=0)


def run_workers(count: int, config_path: str, admin: Listen, control: Listen | None = None) -> int:
    """`control`: the revocation listener, when revocation is on."""
    env = dict(os.environ, **{REUSE_PORT_ENV: "1"})
    cmd = [
        sys.executable,
        "-m",
        "proxy.process.cli",
        "run",
        "--config",
        config_path,
        "--workers",
        "1",
    ]
    # Each worker's admin app on a socket of its own; the supervisor's gateway serves the
    # admin port for all of them (one /metrics), restarted workers included.
    sockets_dir = Path(tempfile.mkdtemp(prefix="clerk-auth-proxy-"))
    sockets = [sockets_dir / f"worker-{i}.sock" for i in range(count)]

    def spawn(index: int) -> subprocess.Popen[bytes]:
        own = dict(env, **{ADMIN_SOCKET_ENV: str(sockets[index]), WORKER_ENV: str(index)})
        return subprocess.Popen(cmd, env=own)  # noqa: S603

    gateway = Gateway(
        admin.host,
        admin.port,
        sockets,
        None if control is None else (control.host, control.port),
    )
    try:
        gateway.start()
    except OSError as exc:
        shutil.rmtree(sockets_dir, ignore_errors=True)
        # The cli's one line and exit code 2, as for a single process.
        where = admin if gateway.failed == "admin" or control is None else control
        raise ListenError(where.host, where.port, gateway.failed, exc, {}) from None
    supervisor = Supervisor(count, spawn)
    # The workers' own lines name their unix sockets: this is where the admin port is.
    log.info(
        "supervising",
        extra={"workers": count, "admin": f"{admin.host}:{gateway.port}", "pid": os.getpid()},
    )

    def on_stop(signum: int, frame: FrameType | None) -> None:
        supervisor.stop(signum)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        supervisor.signal_all(signum)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    supervisor.start()
    try:
        return supervisor.wait()
    finally:
        gateway.stop()
        shutil.rmtree(sockets_dir, ignore_errors=True)
