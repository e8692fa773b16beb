"""`run --workers N` is one process from outside: the supervisor's admin port answers for
all workers — one /metrics whose counters are the workers' sums and never go down, even
when a worker is killed and replaced — and /revoke reaches every worker."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Recorder
from tests.test_process import Running, upstream, write_config
from tests.test_workers import start_workers, wait_for

__all__ = ["upstream"]  # a fixture

SECRET = "workers-revoke-secret-0123"


def requests_total(text: str, route: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "authproxy_requests_total" and sample.labels.get("route") == route:
                total += sample.value
    return total


async def scrape(running: Running) -> str:
    async with aiohttp.ClientSession() as s, s.get(running.admin_url("/metrics")) as resp:
        assert resp.status == 200
        # Prometheus's text format 0.0.4, as a lone process's admin port says too.
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return await resp.text()


async def hit(running: Running, n: int) -> None:
    for _ in range(n):
        async with aiohttp.ClientSession() as fresh:  # new connections spread over workers
            async with fresh.get(running.url("/public/x")) as resp:
                assert resp.status == 200


async def test_one_metrics_for_all_workers_that_never_goes_down(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url, revocation={"secret": SECRET})
    running = await start_workers(config, port, admin, 2)
    try:
        serving = await wait_for(running, "serving", 2)
        await hit(running, 20)
        first = requests_total(await scrape(running), "public")
        again = requests_total(await scrape(running), "public")
        # Every scrape sees every worker: 20 each time, not one worker's share.
        assert first == again == 20
        text = await scrape(running)
        assert text.count("authproxy_build_info{") == 1
        build_info = text.split("authproxy_build_info{", 1)[1].split("\n", 1)[0]
        assert 'version="' in build_info and 'compiled="' in build_info
        assert build_info.endswith("} 1.0")
        # A worker killed and replaced: what it had counted is kept.
        os.kill(serving[0]["pid"], signal.SIGKILL)
        await wait_for(running, "serving", 3)
        await hit(running, 10)
        # A worker that has not answered the gateway yet counts with its last scrape (the
        # replaced one's): on a busy machine the new one's first answer may miss a scrape.
        for _ in range(50):
            if (total := requests_total(await scrape(running), "public")) == 30:
                break
            await asyncio.sleep(0.1)
        assert total == 30
        # /revoke goes to every worker.
        async with aiohttp.ClientSession() as s:
            async with s.post(
                running.control_url("/revoke"),
                json={"subject": "mch_nobody", "ttl_seconds": 60},
                headers={"Authorization": f"Bearer {SECRET}"},
            ) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert body["workers"] == {"total": 2, "applied": 2}
            # Never on the admin port, which a Service publishes for scraping.
            async with s.post(
                running.admin_url("/revoke"),
                json={"subject": "mch_nobody"},
                headers={"Authorization": f"Bearer {SECRET}"},
            ) as resp:
                assert resp.status in (404, 405)
            async with s.get(running.admin_url("/readyz")) as resp:
                assert resp.status == 200 and (await resp.json())["ready"] == 2
    finally:
        if running.proc.returncode is None:
            running.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.proc.wait(), 30) == 0


async def test_workers_are_named_and_each_process_is_seen(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    # The supervisor says where its admin port is; every worker line says which worker;
    # process_* and the config's gauges are per worker (a sum of start times or of
    # "last reload worked" means nothing); /readyz names the one config all serve.
    url, _ = upstream
    config = tmp_path / "c.yaml"
    port, admin = write_config(config, url)
    running = await start_workers(config, port, admin, 2)
    try:
        serving = await wait_for(running, "serving", 2)
        (supervising,) = [line for line in running.lines if line.get("msg") == "supervising"]
        assert supervising["admin"] == f"127.0.0.1:{admin}" and supervising["workers"] == 2
        assert "worker" not in supervising
        assert sorted(line["worker"] for line in serving) == [0, 1]
        await hit(running, 4)
        text = await scrape(running)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        rss = families["process_resident_memory_bytes"].samples
        assert sorted(s.labels["worker"] for s in rss) == ["0", "1"]
        assert all(s.value > 1_000_000 for s in rss)
        infos = families["authproxy_config_info"].samples
        assert sorted(s.labels["worker"] for s in infos) == ["0", "1"]
        assert {s.labels["hash"] for s in infos} == {serving[0]["config"]}
        async with aiohttp.ClientSession() as s, s.get(running.admin_url("/readyz")) as resp:
            assert (await resp.json())["config"] == serving[0]["config"]
        await asyncio.sleep(0.5)  # the access lines' batch is written
        access = [line for line in running.lines if line.get("logger") == "proxy.access"]
        assert access and all(line["worker"] in (0, 1) for line in access)
    finally:
        running.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.proc.wait(), 30) == 0
