"""Instructions per request of the proxy (user space), counted by valgrind's callgrind:
the one measure here that does not move with the machine's load, so it compares commits.

The proxy runs under callgrind with instrumentation off; after a warm-up on one keep-alive
connection, instrumentation is switched on for N requests sent one at a time, then the
count is dumped. Kernel work (the socket calls) is not counted; see the CPU figures.

    python -m bench.instructions PROXY_PORT CONFIG LEG_PATH [HEADER-JSON] -> one JSON line

`BENCH_CALLGRIND_KEEP=FILE` keeps the dump (for `callgrind_annotate --inclusive=yes`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.serial import Requests, client_request, exchange

WARM = 300
COUNTED = 2000


def count(port: int, config: str, path: str, headers: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="clerk-bench-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
             sys.executable, "-m", "proxy.process.cli", "run", "--config", config],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 300
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as probe:
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the proxy did not start under valgrind")
                time.sleep(0.5)
            del probe
            requests = Requests(client_request(path, "bench", headers))
            with socket.create_connection(("127.0.0.1", port)) as sock:
                for _ in range(WARM):
                    if not exchange(sock, requests.next()):
                        raise SystemExit("the proxy did not answer 200")
                subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True)
                for _ in range(COUNTED):
                    exchange(sock, requests.next())
                subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True)
                subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
            dumps = sorted(glob.glob(f"{out}*"), key=os.path.getmtime)
            keep = os.environ.get("BENCH_CALLGRIND_KEEP")
            if keep:  # for callgrind_annotate: where the instructions go
                Path(keep).write_bytes(Path(dumps[-1]).read_bytes())
            total = 0
            for line in Path(dumps[-1]).read_text().splitlines():
                if line.startswith("totals:"):
                    total = int(line.split()[1])
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"requests": COUNTED, "instructions_per_request": total / COUNTED}


def main() -> None:
    port, config, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    headers = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    print(json.dumps(count(port, config, path, headers)))


if __name__ == "__main__":
    main()
