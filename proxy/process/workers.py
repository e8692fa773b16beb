"""`--workers N`: N independent processes sharing the listen port via SO_REUSEPORT.

Each worker is a full proxy with its own verification cache, so a token costs up to N
Clerk calls per TTL instead of one (see docs/performance.md). The kernel spreads new
connections across workers. The parent only supervises: it forwards SIGTERM/SIGINT/SIGHUP
and exits with the first non-zero worker status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

REUSE_PORT_ENV = "CLERK_AUTH_PROXY_REUSE_PORT"


def run_workers(count: int, config_path: str) -> int:
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
    children = [subprocess.Popen(cmd, env=env) for _ in range(count)]  # noqa: S603

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    while any(child.poll() is None for child in children):
        for child in children:
            code = child.poll()
            if code not in (None, 0) and status == 0:
                # One worker died: take the others down so the pod restarts cleanly.
                status = code
                forward(signal.SIGTERM, None)
        time.sleep(0.2)
    return status or max((c.returncode or 0) for c in children)
