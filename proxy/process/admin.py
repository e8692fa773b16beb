"""The admin listener (/healthz, /readyz, /metrics: what probes and scrapers reach) and
the control listener (POST /revoke, `revoke`): a mutating endpoint is never on the port
a Service publishes for scraping. Neither is exposed with the API."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from proxy.config.fingerprint import digest
from proxy.process.revoke import handle_revoke
from proxy.request.app import PROXY, Proxy


def create_admin_app(proxy: Proxy, *, control: bool = False) -> web.Application:
    """/healthz, /readyz and /metrics; `control` adds POST /revoke, for a worker's unix
    socket, which only its supervisor reaches (it serves both listeners for all)."""
    admin = web.Application()
    admin[PROXY] = proxy
    admin.router.add_get("/healthz", _healthz)
    admin.router.add_get("/readyz", _readyz)
    admin.router.add_get("/metrics", _metrics)
    if control:
        admin.router.add_post("/revoke", handle_revoke)
    return admin


def create_control_app(proxy: Proxy) -> web.Application:
    """POST /revoke, on `revocation.listen`."""
    control = web.Application()
    control[PROXY] = proxy
    control.router.add_post("/revoke", handle_revoke)
    return control


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    # Which config serves, in every answer: after a failed reload it is still the old one.
    config = digest(proxy.config)
    if proxy.draining:
        return web.json_response({"status": "draining", "config": config}, status=503)
    try:
        rt = proxy.runtime
        up = rt.config.upstream
        timeout = aiohttp.ClientTimeout(total=up.connect_timeout + 1.0, connect=up.connect_timeout)
        async with proxy.session.get(
            up.url + up.readiness_path, timeout=timeout, allow_redirects=False
        ) as resp:
            await resp.read()
    except (AssertionError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = type(exc).__name__
        return web.json_response(
            {"status": "upstream unavailable", "reason": reason, "config": config}, status=503
        )
    return web.json_response(
        {"status": "ready", "environment": rt.config.environment, "config": config}
    )


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[PROXY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
