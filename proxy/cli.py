"""`clerk-auth-proxy`: run, check-config, emulate-clerk, demo; and process life.

Process life: SIGTERM/SIGINT → /readyz 503 → (shutdown.delay) → stop accepting → in-flight
requests get shutdown.grace_period to finish → exit 0. SIGHUP or a changed config file →
reload; a new config that fails validation is logged and the old one keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from . import __version__, compiled, listener
from .admin import create_admin_app
from .app import PROXY, Proxy, create_app
from .config import Config, ConfigError, load_config
from .logs import configure_logging
from .workers import REUSE_PORT_ENV, run_workers

log = logging.getLogger("proxy")

CONFIG_POLL_SECONDS = 2.0


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()  # follows symlinks: Kubernetes swaps ConfigMap files via a symlink
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Server:
    """Both listeners of one process and their orderly shutdown."""

    def __init__(self, config: Config, config_path: Path, *, reuse_port: bool = False) -> None:
        self.config = config
        self.config_path = config_path
        self.reuse_port = reuse_port
        self.app = create_app(config)
        self.proxy: Proxy = self.app[PROXY]
        self.admin = create_admin_app(self.proxy)
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    async def reload(self, reason: str) -> bool:
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                self.proxy.metrics.config_reloads.labels("failed").inc()
                log.error(
                    "config reload failed; keeping the running config",
                    extra={"reason": reason, "problems": [str(i) for i in exc.issues]},
                )
                return False
            await self.proxy.reload(new)
            self.config = new
            self.proxy.metrics.config_reloads.labels("ok").inc()
            log.info("config reloaded", extra={"reason": reason, "environment": new.environment})
            return True

    async def _watch_config(self) -> None:
        last = _file_signature(self.config_path)
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            current = _file_signature(self.config_path)
            if current is not None and current != last:
                last = current
                await self.reload("file changed")

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        cfg = self.config
        runner = web.AppRunner(
            self.app,
            auto_decompress=False,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=cfg.shutdown.grace_period,
        )
        admin_runner = web.AppRunner(self.admin, access_log=None, handle_signals=False)
        await runner.setup()
        await admin_runner.setup()
        front: listener.FrontDoorServer | None = None
        if cfg.listen.fast_path and cfg.upstream.url.startswith("http://"):
            front = await listener.serve(
                self.proxy, runner, cfg.listen.host, cfg.listen.port, reuse_port=self.reuse_port
            )
        else:
            site = web.TCPSite(
                runner, cfg.listen.host, cfg.listen.port, reuse_port=self.reuse_port, backlog=1024
            )
            await site.start()
        admin_site = web.TCPSite(
            admin_runner, cfg.admin.host, cfg.admin.port, reuse_port=self.reuse_port
        )
        await admin_site.start()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        watcher = asyncio.create_task(self._watch_config())
        log.info(
            "serving",
            extra={
                "environment": cfg.environment,
                "clerk_instance": cfg.clerk.instance,
                "clerk_api_url": cfg.clerk.api_url,
                "listen": f"{cfg.listen.host}:{cfg.listen.port}",
                "fast_path": front is not None,
                "compiled": compiled(),
                "admin": f"{cfg.admin.host}:{cfg.admin.port}",
                "upstream": cfg.upstream.url,
                "version": __version__,
                "pid": os.getpid(),
            },
        )
        try:
            await self._stop.wait()
        finally:
            watcher.cancel()
            self.proxy.draining = True
            log.info("draining", extra={"grace_period": self.config.shutdown.grace_period})
            if self.config.shutdown.delay:
                await asyncio.sleep(self.config.shutdown.delay)
            # Closes the listener, lets in-flight requests finish within the grace
            # period, then cancels what is left — on the fast path's connections and on
            # aiohttp's (handed-off ones included) at the same time.
            if front is not None:
                self.proxy.front_door_drained = asyncio.ensure_future(
                    front.drain(self.config.shutdown.grace_period)
                )
            await runner.cleanup()
            await admin_runner.cleanup()
            log.info("stopped")


def _run_loop(coro_factory: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(coro_factory())  # type: ignore[operator]
    else:
        uvloop.run(coro_factory())  # type: ignore[operator]


def _load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{len(exc.issues)} problem(s) in {path}:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    configure_logging(config.logging.level)
    workers = args.workers or config.workers
    if workers > 1:
        return run_workers(workers, args.config)

    reuse_port = os.environ.get(REUSE_PORT_ENV) == "1"

    async def main() -> None:
        await Server(config, Path(args.config), reuse_port=reuse_port).serve()

    _run_loop(main)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    print(
        f"{args.config}: OK (environment {config.environment}, "
        f"Clerk instance {config.clerk.instance} at {config.clerk.api_url}, "
        f"{len(config.routes)} routes)"
    )
    return 0


def cmd_emulate_clerk(args: argparse.Namespace) -> int:
    from .emulator import run_emulator

    run_emulator(args.host, args.port, args.secret_key)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clerk-auth-proxy",
        description="Authenticating reverse proxy for APIs behind Clerk.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve the proxy and the admin port")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument(
        "--workers", type=int, default=0, help="processes sharing the port (SO_REUSEPORT)"
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file; exit 2 on problems")
    check.add_argument("--config", required=True)
    check.set_defaults(func=cmd_check_config)

    emu = sub.add_parser("emulate-clerk", help="serve a Clerk Backend API emulator for tests")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=3100)
    emu.add_argument("--secret-key", default="sk_test_emulator")
    emu.set_defaults(func=cmd_emulate_clerk)

    demo = sub.add_parser("demo", help="proxy + demo upstream + Clerk emulator, all local")
    demo.add_argument("--config", default="config/local.yaml")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
