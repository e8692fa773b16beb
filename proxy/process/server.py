"""Serving one config in one process: both listeners, reload on SIGHUP or a changed
file, and the orderly shutdown.

Process life: SIGTERM/SIGINT → /readyz 503 → (shutdown.delay) → stop accepting → in-flight
requests get shutdown.grace_period to finish → exit 0. SIGHUP or a changed config file →
reload; a new config that fails validation is logged and the old one keeps serving. A
reload happens once per change: the config file and the secret files it reads are compared
with what the running config was loaded from, so an edit followed by SIGHUP (the watcher
and the signal both noticing) loads once, and a SIGHUP with nothing changed loads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy import __version__, compiled
from proxy.config.fingerprint import changed_keys, digest
from proxy.config.load import Config, ConfigError, Listen, load_config
from proxy.core.background import Background
from proxy.fastpath import listener
from proxy.fastpath.doorway import Ceiling
from proxy.process.admin import create_admin_app, create_control_app
from proxy.process.descriptors import raise_to_hard_limit
from proxy.process.gateway import ADMIN_SOCKET_ENV
from proxy.process.heap import freeze_start_up
from proxy.process.ports import ListenError, bind
from proxy.request.app import PROXY, Proxy, create_app
from proxy.request.forward_auth import create_forward_auth_app

log = logging.getLogger("proxy")

CONFIG_POLL_SECONDS = 2.0
# aiohttp's own shutdown wait per connection: the drain has ended them all before it runs.
AIOHTTP_SHUTDOWN = 0.25
# The part of the promised `delay + grace + 1 s` left for the closing handshakes and
# clean-up after the grace period; past it the backstop exits.
EXIT_MARGIN = 0.9


Signature = tuple[tuple[int, int, int] | None, ...]


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: Kubernetes swaps ConfigMap files via a symlink
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def inputs_signature(config: Config) -> Signature:
    """What the files a config was read from look like now."""
    return tuple(_file_signature(path) for path in config.inputs)


def log_warnings(config: Config) -> None:
    for key, why in config.warnings:
        log.warning("config: %s", why, extra={"key": key})


class Server:
    """Both listeners of one process and their orderly shutdown."""

    def __init__(self, config: Config, config_path: Path, *, reuse_port: bool = False) -> None:
        self.config = config
        self.config_path = config_path
        self.reuse_port = reuse_port
        self.app = create_app(config)
        self.proxy: Proxy = self.app[PROXY]
        # A worker of `run --workers N` serves its admin app on a unix socket that only the
        # supervisor reaches (gateway): /revoke goes there too. Alone, /revoke has its own
        # listener (`revocation.listen`), bound when revocation is on.
        self.admin_socket = os.environ.get(ADMIN_SOCKET_ENV)
        self.admin = create_admin_app(self.proxy, control=bool(self.admin_socket))
        self.control = (
            create_control_app(self.proxy)
            if config.revocation.secret and not self.admin_socket
            else None
        )
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._reloads = Background()  # SIGHUP's
        self._loaded = inputs_signature(config)
        self.proxy.metrics.config_loaded(digest(config), reload=False)
        # Cleaned up in this order: the doors' first (`forward_auth:`'s, then the
        # client-facing one), then the admin and control apps.
        self._runners: list[web.AppRunner] = []
        # The client-facing listener and `forward_auth:`'s, when configured: timed,
        # limited and drained alike.
        self._fronts: list[listener.FrontDoorServer] = []
        # Every client connection of this process (both listeners) against its
        # descriptors: derived once they are raised, again when a reload changes the
        # `connections:` policy.
        self.ceiling = Ceiling()

    async def reload(self, reason: str) -> bool:
        async with self._reload_lock:
            # Read before loading: a change made while loading is seen by the next look.
            seen = inputs_signature(self.config)
            if seen == self._loaded:
                log.info("config unchanged; not reloaded", extra={"reason": reason})
                return False
            running = digest(self.config)
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                self.proxy.metrics.config_reload_failed()
                log.error(
                    "config reload failed; keeping the running config",
                    extra={
                        "reason": reason,
                        "config": running,
                        "problems": [str(i) for i in exc.issues],
                    },
                )
                return False
            if new.inputs != self.config.inputs:
                # It names other secret files: signed as they were when loaded.
                seen = inputs_signature(new)
            changed = changed_keys(self.config, new)
            self._loaded = seen
            if not changed:
                # Touched, or written twice in one edit, but saying the same: one reload
                # per change of what the config says, not per change of its files.
                log.info(
                    "config unchanged; not reloaded", extra={"reason": reason, "config": running}
                )
                return False
            await self.proxy.reload(new)
            if self.ceiling.descriptors:
                ceiling = self.ceiling
                ceiling.configure(ceiling.descriptors, new.connections, self.proxy.metrics)
            self.config = new
            now = digest(new)
            self.proxy.metrics.config_loaded(now, reload=True)
            log.info(
                "config reloaded",
                extra={
                    "reason": reason,
                    "environment": new.environment,
                    "config": now,
                    "previous_config": running,
                    "changed": changed,
                },
            )
            log_warnings(new)
            return True

    async def _watch_config(self) -> None:
        last = self._loaded
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            current = inputs_signature(self.config)
            # A file that is away (mid-swap) is looked at again; one that failed to
            # load is not retried until it changes again.
            if None not in current and current != last and current != self._loaded:
                last = current
                await self.reload("file changed")

    async def serve(self) -> None:
        await self.start()
        await self.run()

    def _runner(self, app: web.Application, *, door: bool = False, **more: Any) -> web.AppRunner:
        """`app`'s runner; a `door` (for clients) is timed by `connections:`, and a
        connection gone (the client's doing, or the drain deadline's) ends its handler,
        which then logs its line (499, or 503 for a cut) instead of running on unseen."""
        if door:
            more["keepalive_timeout"] = listener.backstop_keepalive(self.config.connections)
            more["handler_cancellation"] = True
        # By the time aiohttp's shutdown runs, the drain has ended every connection.
        return web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=AIOHTTP_SHUTDOWN, **more
        )

    async def _listen(
        self, runner: web.AppRunner, host: str, port: int, key: str, fast_path: bool = False
    ) -> None:
        front = await bind(
            lambda: listener.serve(
                self.proxy,
                runner,
                host,
                port,
                reuse_port=self.reuse_port,
                fast_path=fast_path,
                ceiling=self.ceiling,
            ),
            host,
            port,
            key,
            self.config.variables,
        )
        self._fronts.append(front)

    async def _site(self, runner: web.AppRunner, where: Listen, key: str) -> None:
        site = web.TCPSite(runner, where.host, where.port, reuse_port=self.reuse_port)
        await bind(site.start, where.host, where.port, key, self.config.variables)

    async def start(self) -> None:
        """Bind every listener, or raise ListenError having closed what was opened."""
        cfg = self.config
        listen, admin, fa = cfg.listen, cfg.admin, cfg.forward_auth
        runner = self._runner(self.app, door=True, auto_decompress=False)
        admin_runner = self._runner(self.admin)
        control_runner = self._runner(self.control) if self.control is not None else None
        forward_runner = (
            self._runner(create_forward_auth_app(self.proxy), door=True) if fa is not None else None
        )
        self._runners = [
            r for r in (forward_runner, runner, admin_runner, control_runner) if r is not None
        ]
        for each in self._runners:
            await each.setup()
        # One listener for both doors: the fast path needs a plain-HTTP upstream.
        fast_path = listen.fast_path and cfg.upstream.url.startswith("http://")
        try:
            await self._listen(runner, listen.host, listen.port, "listen", fast_path)
            admin_socket = self.admin_socket
            if admin_socket:
                # A worker of `run --workers N`: the supervisor serves the admin port for
                # all of them (gateway), and reaches this worker's admin app here.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(admin_socket)
                await web.UnixSite(admin_runner, admin_socket).start()
            else:
                await self._site(admin_runner, admin, "admin")
            if control_runner is not None:
                await self._site(control_runner, cfg.revocation.listen, "revocation.listen.port")
            if forward_runner is not None and fa is not None:
                await self._listen(forward_runner, fa.host, fa.port, "forward_auth")
        except ListenError:
            for front in self._fronts:
                await front.drain(time.monotonic())
            for each in self._runners:
                await each.cleanup()
            raise

        # Once it is sure to serve (a taken port is one line and exit 2, nothing more).
        raise_to_hard_limit(
            lambda soft: self.ceiling.configure(soft, cfg.connections, self.proxy.metrics)
        )
        self.proxy.warm()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._reloads.spawn(self.reload("SIGHUP")))
        log.info(
            "serving",
            extra={
                "environment": cfg.environment,
                "clerk_instance": cfg.clerk.instance,
                "clerk_api_url": cfg.clerk.api_url,
                "listen": f"{listen.host}:{listen.port}",
                "fast_path": fast_path,
                "compiled": compiled(),
                "admin": admin_socket or f"{admin.host}:{admin.port}",
                "forward_auth": fa and f"{fa.host}:{fa.port}",
                **(
                    {"control": f"{cfg.revocation.listen.host}:{cfg.revocation.listen.port}"}
                    if self.control is not None
                    else {}
                ),
                "upstream": cfg.upstream.url,
                "version": __version__,
                "config": digest(cfg),
                "pid": os.getpid(),
            },
        )
        log_warnings(cfg)
        if not compiled() and cfg.environment == "production":
            # A pip install that could not compile falls back to pure Python: the same
            # answers at about twice the CPU. Said once, at start, where an operator looks.
            log.warning(
                "running the pure-Python request path (mypyc did not compile it): "
                "about twice the CPU per request; build with a C compiler, as the image does",
                extra={"compiled": False},
            )
        freeze_start_up()

    async def run(self) -> None:
        """Serve until asked to stop, then drain (after `start`)."""
        assert self._fronts, "start() first"
        watcher = asyncio.create_task(self._watch_config())
        try:
            await self._stop.wait()
        finally:
            watcher.cancel()
            await self._shut_down()

    async def _shut_down(self) -> None:
        """/readyz 503 at once; the listener closes after `delay`; what is in flight
        flows until `delay + grace`; then 1001s, cuts and exit — within `delay + grace +
        1 s` whatever the process holds (a backstop exits it there)."""
        shutdown = self.config.shutdown
        self.proxy.draining = True
        log.info("draining", extra={"grace_period": shutdown.grace_period, "delay": shutdown.delay})
        deadline = time.monotonic() + shutdown.delay + shutdown.grace_period
        backstop = exit_at(deadline + EXIT_MARGIN)
        try:
            if shutdown.delay:
                await asyncio.sleep(shutdown.delay)
            await asyncio.gather(*(front.drain(deadline) for front in self._fronts))
            for each in self._runners:
                await each.cleanup()
        finally:
            backstop.cancel()
        log.info("stopped")


def exit_at(when: float) -> threading.Timer:
    """A thread that ends the process at `when` (`time.monotonic()`) if the shutdown has
    not: Kubernetes would SIGKILL it a little later, mid-write."""

    def now_or_never() -> None:
        log.error("shutdown overran its deadline; exiting now")
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(max(0.0, when - time.monotonic()), now_or_never)
    timer.daemon = True
    timer.start()
    return timer
