"""`clerk-auth-proxy run` under tracemalloc, for `make soak --trace`: SIGUSR1 writes a
snapshot to $SOAK_SNAPSHOT.<n> (diagnosis only; never how the proxy is deployed)."""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from types import FrameType


def main() -> None:
    tracemalloc.start(int(os.environ.get("SOAK_TRACE_FRAMES", "12")))
    taken = 0

    def snapshot(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        gc.collect()
        taken += 1
        tracemalloc.take_snapshot().dump(f"{os.environ['SOAK_SNAPSHOT']}.{taken}")

    signal.signal(signal.SIGUSR1, snapshot)
    from proxy.process.cli import main as run

    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
