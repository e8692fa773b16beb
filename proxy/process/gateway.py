"""`--workers N` as one process from outside: the supervisor's admin port.

Each worker serves its admin app on a unix socket of its own (`ADMIN_SOCKET_ENV`); the
supervisor serves the configured admin port and answers for all of them:

- `/metrics`: every worker's metrics, summed per series (a gauge like `build_info` that
  says what, not how many, is taken once). A worker whose counters went down was
  restarted: what it had counted before is kept and added, so the sums only grow and
  Prometheus sees no reset. A worker that does not answer in time counts with its last
  scrape.
- `/readyz`: ready when every worker is; `/healthz`: the supervisor is alive.
- `/revoke`, on the control listener (`revocation.listen`, its own port, never the admin
  port): sent to every worker (each drops its own entries; with the shared level they
  also hear it from Redis, which is harmless), answered with the first worker's answer
  and how many workers took it.

It runs in a thread with its own event loop: the supervisor's own loop is a plain poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from proxy.core.errors import PAYLOAD_TOO_LARGE, REVOCATION_UNAVAILABLE, ProxyError

log = logging.getLogger("proxy")

ADMIN_SOCKET_ENV = "CLERK_AUTH_PROXY_ADMIN_SOCKET"
SCRAPE_TIMEOUT = 2.0
MAX_BODY = 64 * 1024
# Gauges that state a fact rather than count something: taken once, not summed.
_ONCE_GAUGES = frozenset({"authproxy_build_info"})
# Series about one process, which a sum would make meaningless (start times, descriptor
# limits, a worker's config and whether its last reload worked): kept apart, labelled
# with the worker's index.
_PER_WORKER_PREFIXES = ("process_", "authproxy_config_info", "authproxy_config_last_reload_")


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class Family:
    __slots__ = ("documentation", "name", "type")

    def __init__(self, name: str, documentation: str, type_: str) -> None:
        self.name, self.documentation, self.type = name, documentation, type_


class Snapshot:
    """One worker's series: family of each, and values."""

    def __init__(self, text: str) -> None:
        self.families: dict[str, Family] = {}
        self.values: dict[SeriesKey, float] = {}
        self.family_of: dict[SeriesKey, str] = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = Family(family.name, family.documentation, family.type)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                self.values[key] = float(sample.value)
                self.family_of[key] = family.name

    def counting(self, key: SeriesKey) -> bool:
        return self.families[self.family_of[key]].type in ("counter", "histogram", "summary")


class Aggregate:
    """The workers' last snapshots and what restarted workers had counted before."""

    def __init__(self, workers: int) -> None:
        self.last: list[Snapshot | None] = [None] * workers
        self.carried: list[dict[SeriesKey, float]] = [{} for _ in range(workers)]

    def update(self, worker: int, snapshot: Snapshot) -> None:
        previous = self.last[worker]
        # Restarted (a counter went down): what it had counted is carried on.
        if previous is not None and any(
            previous.counting(key) and snapshot.values.get(key, 0.0) < value
            for key, value in previous.values.items()
        ):
            carried = self.carried[worker]
            for key, value in previous.values.items():
                if previous.counting(key):
                    carried[key] = carried.get(key, 0.0) + value
        self.last[worker] = snapshot

    def render(self) -> bytes:
        families: dict[str, Family] = {}
        sums: dict[SeriesKey, float] = {}
        family_of: dict[SeriesKey, str] = {}
        for worker, snapshot in enumerate(self.last):
            if snapshot is None:
                continue
            families.update(snapshot.families)
            family_of.update(snapshot.family_of)
            for key, value in snapshot.values.items():
                name = snapshot.family_of[key]
                if name.startswith(_PER_WORKER_PREFIXES):
                    key = _labelled(key, worker)
                    family_of[key] = name
                if name in _ONCE_GAUGES:
                    sums[key] = max(sums.get(key, 0.0), value)
                else:
                    sums[key] = sums.get(key, 0.0) + value
            for key, value in self.carried[worker].items():
                if key in snapshot.family_of:
                    if snapshot.family_of[key].startswith(_PER_WORKER_PREFIXES):
                        key = _labelled(key, worker)
                    sums[key] = sums.get(key, 0.0) + value
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(_metrics(families, sums, family_of)))
        return generate_latest(registry)


def _labelled(key: SeriesKey, worker: int) -> SeriesKey:
    return key[0], tuple(sorted((*key[1], ("worker", str(worker)))))


def _metrics(
    families: dict[str, Family], sums: dict[SeriesKey, float], family_of: dict[SeriesKey, str]
) -> list[Metric]:
    out: dict[str, Metric] = {}
    for key, value in sums.items():
        name = family_of[key]
        family = families[name]
        metric = out.get(name)
        if metric is None:
            metric = out[name] = Metric(name, family.documentation, family.type)
        metric.add_sample(key[0], dict(key[1]), value)
    return list(out.values())


class _Fixed:
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


class Gateway:
    def __init__(
        self,
        host: str,
        port: int,
        sockets: Sequence[Path],
        control: tuple[str, int] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.control = control
        # Which listener could not be had (the config key), with `error`.
        self.failed = "admin"
        self.sockets = list(sockets)
        self.aggregate = Aggregate(len(self.sockets))
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    # -- the thread

    def start(self) -> None:
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name="admin-gateway", daemon=True
        )
        self._thread.start()
        self._ready.wait(10)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runners = [web.AppRunner(app, access_log=None, handle_signals=False)]
        sites = [("admin", self.host, self.port)]
        if self.control is not None:
            control = web.Application()
            control.router.add_post("/revoke", self._revoke)
            runners.append(web.AppRunner(control, access_log=None, handle_signals=False))
            sites.append(("revocation.listen.port", *self.control))
        try:
            for runner, (key, host, port) in zip(runners, sites, strict=True):
                await runner.setup()
                self.failed = key
                await web.TCPSite(runner, host, port, reuse_port=True).start()
        except OSError as exc:
            self.error = exc
            self._ready.set()
            for runner in runners:
                await runner.cleanup()
            return
        if runners[0].addresses:  # port 0 in the config: the port the kernel chose
            self.port = int(runners[0].addresses[0][1])
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            for runner in runners:
                await runner.cleanup()

    # -- talking to the workers

    async def _each(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> list[tuple[int, bytes] | None]:
        async def one(sock: Path) -> tuple[int, bytes] | None:
            try:
                connector = aiohttp.UnixConnector(path=str(sock))
                timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
                    async with s.request(
                        method, "http://worker" + path, data=body, headers=headers
                    ) as resp:
                        return resp.status, await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                return None

        return list(await asyncio.gather(*(one(sock) for sock in self.sockets)))

    async def _metrics(self, request: web.Request) -> web.Response:
        for worker, answer in enumerate(await self._each("GET", "/metrics")):
            if answer is not None and answer[0] == 200:
                with contextlib.suppress(ValueError):
                    self.aggregate.update(worker, Snapshot(answer[1].decode()))
        return web.Response(
            body=self.aggregate.render(),
            headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4},
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "workers": len(self.sockets)})

    async def _readyz(self, request: web.Request) -> web.Response:
        answers = await self._each("GET", "/readyz")
        ready = sum(1 for a in answers if a is not None and a[0] == 200)
        body: dict[str, Any] = {"workers": len(answers), "ready": ready}
        # Each worker reloads on its own: more than one hash here is a reload that failed
        # in some of them.
        configs = sorted({_config_of(a[1]) for a in answers if a is not None} - {""})
        body["config"] = configs[0] if len(configs) == 1 else configs
        if ready == len(answers):
            return web.json_response({"status": "ready", **body})
        return web.json_response({"status": "not ready", **body}, status=503)

    async def _revoke(self, request: web.Request) -> web.Response:
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return ProxyError(PAYLOAD_TOO_LARGE, f"at most {MAX_BODY} bytes").response()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        answers = await self._each("POST", "/revoke", body=body, headers=headers)
        taken = [a for a in answers if a is not None]
        if not taken:
            return ProxyError(REVOCATION_UNAVAILABLE, "no worker answered").response()
        status, first = taken[0]
        try:
            payload = json.loads(first)
        except ValueError:
            payload = {}
        if isinstance(payload, dict) and status == 200:
            payload["workers"] = {
                "total": len(answers),
                "applied": sum(1 for a in taken if a[0] == 200),
            }
        return web.json_response(payload, status=status)


def _config_of(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return ""
    config = answer.get("config") if isinstance(answer, dict) else None
    return config if isinstance(config, str) else ""
