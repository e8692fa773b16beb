"""The HTTP reverse proxy end to end: real client → proxy → real upstream, all on sockets."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.process.admin import create_admin_app
from proxy.request.app import PROXY, create_app
from tests.support import Recorder, StubVerifier, header_values, make_config, upstream_app

MB = 1024 * 1024

Servers = tuple[TestServer, TestServer, Recorder]
ServerFactory = Callable[..., Awaitable[Servers]]


@pytest.fixture
async def proxied(aiohttp_server: Any) -> ServerFactory:
    async def start(**overrides: Any) -> Servers:
        recorder = Recorder()
        upstream = await aiohttp_server(upstream_app(recorder), auto_decompress=False)
        config = make_config(str(upstream.make_url("")).rstrip("/"), **overrides)
        proxy = await aiohttp_server(
            create_app(config, verifier=StubVerifier()), auto_decompress=False
        )
        return proxy, upstream, recorder

    return start


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def test_get_passes_path_query_and_headers_exactly(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, recorder = await proxied()
    target = "/public/a%20b/%E2%9C%93?q=%2Fx%2F&y=1+2&empty=&&z"
    url = URL(str(proxy.make_url("")).rstrip("/") + target, encoded=True)
    async with client.get(url, headers={"X-Custom": "kept", "Accept": "text/plain"}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Upstream"] == "yes"
        # The upstream's hop-by-hop header and what its Connection named are not relayed.
        assert "X-Hop" not in resp.headers
    seen = recorder.last
    assert seen.raw_path == target
    assert header_values(seen.headers, "X-Custom") == ["kept"]
    assert header_values(seen.headers, "Accept") == ["text/plain"]
    assert header_values(seen.headers, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(seen.headers, "X-Forwarded-Proto") == ["http"]
    assert header_values(seen.headers, "X-Auth-Principal-Type") == ["anonymous"]
    # aiohttp must not add its own defaults on the way up.
    assert header_values(seen.headers, "User-Agent") == [
        v for k, v in resp.request_info.headers.items() if k == "User-Agent"
    ]


async def test_connection_header_strips_named_headers(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, recorder = await proxied()
    async with client.get(
        proxy.make_url("/public/x"),
        headers={"Connection": "keep-alive, X-Foo", "X-Foo": "secret", "Keep-Alive": "5",
                 "TE": "trailers", "X-Bar": "kept"},
    ) as resp:
        assert resp.status == 200
    names = {k.lower() for k, _ in recorder.last.headers}
    assert "x-foo" not in names
    assert "keep-alive" not in names
    assert "te" not in names
    assert "x-bar" in names


async def _sample_rss(stop: asyncio.Event, peak: list[int]) -> None:
    proc = psutil.Process(os.getpid())
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_50mb_upload_streams_with_flat_memory(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, recorder = await proxied(upstream={"max_body_size": "100MiB"})
    chunk = os.urandom(256 * 1024)
    total = 50 * MB
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // len(chunk)):
            digest.update(chunk)
            yield chunk

    baseline = psutil.Process(os.getpid()).memory_info().rss
    peak = [baseline]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(stop, peak))
    async with client.put(
        proxy.make_url("/public/upload"), data=body(), headers={"Content-Length": str(total)}
    ) as resp:
        assert resp.status == 200
        answer = await resp.json()
    stop.set()
    await sampler
    assert answer["length"] == total
    assert answer["sha256"] == digest.hexdigest()
    # The client's framing is kept: a Content-Length upload is not re-chunked.
    assert header_values(recorder.last.headers, "Content-Length") == [str(total)]
    assert header_values(recorder.last.headers, "Transfer-Encoding") == []
    assert peak[0] - baseline < 20 * MB, f"memory grew by {(peak[0] - baseline) // MB} MB"


@pytest.mark.slow
@pytest.mark.parametrize("with_length", [True, False])
async def test_50mb_download_streams_with_flat_memory(
    proxied: ServerFactory, client: aiohttp.ClientSession, with_length: bool
) -> None:
    proxy, _, _ = await proxied()
    total = 50 * MB
    url = proxy.make_url("/public/download").with_query(
        size=str(total), length="1" if with_length else "0"
    )
    baseline = psutil.Process(os.getpid()).memory_info().rss
    peak = [baseline]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(stop, peak))
    received = 0
    async with client.get(url) as resp:
        assert resp.status == 200
        if with_length:
            assert resp.headers["Content-Length"] == str(total)
        else:
            assert resp.headers["Transfer-Encoding"] == "chunked"
        async for piece in resp.content.iter_chunked(256 * 1024):
            received += len(piece)
    stop.set()
    await sampler
    assert received == total
    assert peak[0] - baseline < 20 * MB, f"memory grew by {(peak[0] - baseline) // MB} MB"


async def test_gzip_body_passes_through_untouched(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, recorder = await proxied()
    async with client.get(
        proxy.make_url("/public/gzip"), headers={"Accept-Encoding": "gzip"}
    ) as resp:
        raw = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(raw))
    assert raw == gzip.compress(b'{"score": "2-1"}' * 100, mtime=0)
    assert header_values(recorder.last.headers, "Accept-Encoding") == ["gzip"]

    # A gzip *request* body is not decompressed on the way up either.
    payload = gzip.compress(b"hello " * 1000)
    async with client.post(
        proxy.make_url("/public/echo"), data=payload, headers={"Content-Encoding": "gzip"}
    ) as resp:
        answer = await resp.json()
    assert answer["length"] == len(payload)
    assert answer["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_upstream_down_is_502(aiohttp_server: Any, client: aiohttp.ClientSession) -> None:
    app = create_app(make_config("http://127.0.0.1:9"), verifier=StubVerifier())
    proxy = await aiohttp_server(app)
    async with client.get(proxy.make_url("/public/x")) as resp:
        assert resp.status == 502
        body = await resp.json()
    assert body == {
        "error": {"code": "upstream_unavailable", "message": "the upstream is unavailable"}
    }
    metrics = app[PROXY].metrics.render().decode()
    assert 'authproxy_upstream_errors_total{kind="unavailable"} 1.0' in metrics
    assert 'authproxy_requests_total{code="502",method="GET",route="public"} 1.0' in metrics


async def test_upstream_slow_is_504(proxied: ServerFactory, client: aiohttp.ClientSession) -> None:
    proxy, _, _ = await proxied(upstream={"read_timeout": 0.3})
    async with client.get(proxy.make_url("/public/slow?delay=5")) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_client_disconnect_cancels_upstream_and_is_not_an_upstream_failure(
    proxied: ServerFactory,
) -> None:
    proxy, _, recorder = await proxied()
    app = proxy.app
    async with aiohttp.ClientSession() as session:
        resp = await session.get(proxy.make_url("/public/forever"))
        assert resp.status == 200
        await resp.content.readline()
        resp.close()  # drop the connection mid-stream
    for _ in range(100):
        if recorder.cancelled:
            break
        await asyncio.sleep(0.05)
    assert recorder.cancelled == 1
    metrics = app[PROXY].metrics.render().decode()
    assert "authproxy_upstream_errors_total{" not in metrics


@pytest.mark.parametrize("code", [204, 304])
async def test_no_body_statuses(
    proxied: ServerFactory, client: aiohttp.ClientSession, code: int
) -> None:
    proxy, _, _ = await proxied()
    async with client.get(proxy.make_url(f"/public/status/{code}")) as resp:
        assert resp.status == code
        assert await resp.read() == b""
        assert "Transfer-Encoding" not in resp.headers
        if code == 304:
            assert resp.headers["ETag"] == '"v1"'


async def test_head_keeps_length_and_sends_no_body(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, recorder = await proxied()
    async with client.head(proxy.make_url("/public/download?size=1000&length=1")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1000"
        assert await resp.read() == b""
    assert recorder.last.method == "HEAD"


async def test_redirects_are_passed_not_followed(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, recorder = await proxied()
    async with client.get(proxy.make_url("/public/redirect"), allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/elsewhere"
    assert len(recorder.seen) == 1


async def test_upstream_cookies_are_not_replayed_to_other_callers(
    proxied: ServerFactory,
) -> None:
    proxy, _, _ = await proxied()
    async with aiohttp.ClientSession() as alice:
        async with alice.get(proxy.make_url("/public/cookie?who=alice")) as resp:
            assert "upstream_session" in resp.cookies
    async with aiohttp.ClientSession() as bob:
        async with bob.get(proxy.make_url("/public/cookie?who=bob")) as resp:
            assert (await resp.json())["cookie"] is None


async def test_x_forwarded_from_untrusted_peer_is_replaced(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, recorder = await proxied()
    spoof = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "evil.example", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6"}
    async with client.get(proxy.make_url("/public/x"), headers=spoof) as resp:
        assert resp.status == 200
    h = recorder.last.headers
    assert header_values(h, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(h, "X-Forwarded-Proto") == ["http"]
    assert header_values(h, "X-Forwarded-Host") == [f"127.0.0.1:{proxy.port}"]
    assert header_values(h, "Forwarded") == []
    assert header_values(h, "X-Real-IP") == []


async def test_x_forwarded_from_trusted_proxy_is_appended(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, recorder = await proxied(trusted_proxies=["127.0.0.0/8"])
    async with client.get(
        proxy.make_url("/public/x"),
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
    ) as resp:
        assert resp.status == 200
    h = recorder.last.headers
    assert header_values(h, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert header_values(h, "X-Forwarded-Proto") == ["https"]


async def test_body_limit_by_content_length_and_by_stream(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, recorder = await proxied(upstream={"max_body_size": "1KiB"})
    async with client.post(proxy.make_url("/public/echo"), data=b"x" * 2048) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"
    assert recorder.seen == []

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    async with client.post(proxy.make_url("/public/echo"), data=chunked()) as resp:
        assert resp.status == 413
    async with client.post(proxy.make_url("/public/echo"), data=b"z" * 1000) as resp:
        assert resp.status == 200


async def test_admin_health_ready_metrics(aiohttp_server: Any, client: aiohttp.ClientSession) -> None:
    recorder = Recorder()
    upstream = await aiohttp_server(upstream_app(recorder))
    app = create_app(make_config(str(upstream.make_url("")).rstrip("/")), verifier=StubVerifier())
    proxy = await aiohttp_server(app)
    admin = await aiohttp_server(create_admin_app(app[PROXY]))
    async with client.get(proxy.make_url("/public/x")):
        pass
    async with client.get(admin.make_url("/healthz")) as resp:
        assert resp.status == 200
    async with client.get(admin.make_url("/readyz")) as resp:
        assert resp.status == 200
    async with client.get(admin.make_url("/metrics")) as resp:
        text = await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
    for name in (
        "authproxy_requests_total", "authproxy_request_duration_seconds",
        "authproxy_upstream_duration_seconds", "authproxy_auth_decisions_total",
        "authproxy_build_info",
    ):
        assert name in text
    assert "/public/x" not in text  # no label ever carries a path

    await upstream.close()
    async with client.get(admin.make_url("/readyz")) as resp:
        assert resp.status == 503
    app[PROXY].draining = True
    async with client.get(admin.make_url("/readyz")) as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "draining"


async def test_proxy_app_serves_only_proxy_routes(aiohttp_server: Any) -> None:
    # /metrics on the client port is just another (default-route) path: never the registry.
    app = create_app(make_config(), verifier=StubVerifier())
    proxy = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.make_url("/metrics")) as resp:
            assert resp.status == 401
            assert "authproxy_" not in await resp.text()



async def test_client_chosen_methods_cannot_grow_metric_series(aiohttp_server: Any) -> None:
    app = create_app(make_config(), verifier=StubVerifier())
    proxy = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        for method in ("PROPFIND", "MKCOL", "GET"):
            async with session.request(method, proxy.make_url("/private")) as resp:
                assert resp.status == 401
    metrics = app[PROXY].metrics.render().decode()
    assert 'authproxy_requests_total{code="401",method="other",route="default"} 2.0' in metrics
    assert 'authproxy_requests_total{code="401",method="GET",route="default"} 1.0' in metrics
    assert "PROPFIND" not in metrics


async def test_upstream_dying_mid_body_is_502_not_a_short_answer(
    proxied: ServerFactory, client: aiohttp.ClientSession
) -> None:
    proxy, _, _ = await proxied()
    async with client.get(proxy.make_url("/public/truncated")) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"
