"""nginx (Debian's package, `make pytest` installs it) as a real process in a tmp dir of
its own: `-p` prefix, `daemon off`, its error log on stderr. `make conformance` runs it as
the reference proxy; tests/test_forward_auth.py in front of the forward-auth listener."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

MAIN_CONF = """
daemon off;
worker_processes 1;
error_log stderr {log_level};
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
{http}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """One nginx serving `http` (the `http {}` block's directives, where `{port}` is the
    port it listens on) until `stop`."""

    def __init__(self, http: str, *, log_level: str = "error") -> None:
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="nginx-"))
        conf = MAIN_CONF.format(tmp=self.tmp, log_level=log_level, http=http.replace("{port}", str(self.port)))
        (self.tmp / "nginx.conf").write_text(conf)
        self._proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> Nginx:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self._proc = subprocess.Popen([nginx, "-c", str(self.tmp / "nginx.conf"), "-p", str(self.tmp)])
        for _ in range(100):
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self._proc.returncode} (its stderr is above)")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            await asyncio.sleep(0.1)
        self.stop()
        raise RuntimeError("nginx did not listen within 10 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)
