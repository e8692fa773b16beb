"""`make demo`: the proxy with its embedded local stack, all on loopback.

Starts the Clerk emulator, an OAuth issuer emulator and a small live-scores upstream
(REST, plus Socket.IO when python-socketio is installed), then the proxy with
`config/local.yaml`, mints a real M2M token at the Clerk emulator, registers a
client-credentials partner at the issuer emulator, and, once all five listen, prints curl
lines that work. An address already taken is one log line naming it, its config key and
the variable that moves it (`PROXY_PORT`, `ADMIN_PORT`, `UPSTREAM_URL`, `CLERK_API_URL`,
`ISSUER_URL`), and exit code 2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from proxy.config.load import ConfigError, load_config
from proxy.observe.logs import configure_logging
from proxy.process.ports import ListenError, bind

MATCHES = [
    {"id": "m1", "home": "Ajax", "away": "PSV", "score": "2-1", "minute": 67},
    {"id": "m2", "home": "Celtic", "away": "Rangers", "score": "0-0", "minute": 12},
]


def demo_upstream() -> web.Application:
    """A stand-in for the live-scores API: it trusts the proxy's X-Auth-* headers."""

    def principal(request: web.Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower().startswith("x-auth-")}

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def matches(request: web.Request) -> web.Response:
        return web.json_response({"matches": MATCHES, "seen_principal": principal(request)})

    async def anything(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "seen_principal": principal(request)})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/matches", matches)
    app.router.add_get("/api/v1/matches/{tail:.*}", matches)
    try:
        import socketio  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - demo without the test extras
        pass
    else:
        sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")

        @sio.event  # type: ignore[untyped-decorator]
        async def connect(sid: str, environ: object, auth: dict[str, object] | None) -> None:
            who = (auth or {}).get("principal") or {"type": "anonymous"}
            await sio.save_session(sid, {"principal": who})
            await sio.emit("welcome", {"principal": who}, to=sid)

        @sio.event  # type: ignore[untyped-decorator]
        async def join(sid: str, room: str) -> dict[str, object]:
            who = (await sio.get_session(sid))["principal"]
            if room != "public" and who.get("type") == "anonymous":
                await sio.emit(
                    "error", {"room": room, "message": "authentication required"}, to=sid
                )
                return {"ok": False}
            await sio.enter_room(sid, room)
            return {"ok": True, "room": room}

        sio.attach(app)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


async def _site(
    app: web.Application, host: str, port: int, key: str, variables: Mapping[str, tuple[str, ...]]
) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await bind(web.TCPSite(runner, host, port).start, host, port, key, variables)
    except ListenError:
        await runner.cleanup()
        raise
    return runner


async def _demo(config_path: str) -> None:
    from proxy.emulator import ClerkEmulator, IssuerEmulator, seed_demo, seed_issuer_demo
    from proxy.process.server import Server

    emulator = ClerkEmulator(secret_key=os.environ.get("CLERK_SECRET_KEY", "sk_test_emulator"))
    clerk_url = os.environ.get("CLERK_API_URL", "http://127.0.0.1:3100")
    upstream_url = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:3000")
    issuer_url = os.environ.get("ISSUER_URL", "http://127.0.0.1:3200")
    os.environ.setdefault("ISSUER_URL", issuer_url)
    issuer = IssuerEmulator(issuer_url)
    os.environ.setdefault("CLERK_API_URL", clerk_url)
    os.environ.setdefault("UPSTREAM_URL", upstream_url)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        raise SystemExit(2) from None

    c, u, i = urlsplit(clerk_url), urlsplit(upstream_url), urlsplit(issuer_url)
    names: Mapping[str, tuple[str, ...]] = {
        "clerk.api_url": ("CLERK_API_URL",),
        "upstream.url": ("UPSTREAM_URL",),
        "issuers[0].issuer": ("ISSUER_URL",),
    }
    runners: list[web.AppRunner] = []
    try:
        for app, where, default, key in (
            (issuer.app, i, 3200, "issuers[0].issuer"),
            (emulator.app, c, 3100, "clerk.api_url"),
            (demo_upstream(), u, 3000, "upstream.url"),
        ):
            host, port = where.hostname or "127.0.0.1", where.port or default
            runners.append(await _site(app, host, port, key, names))
        server = Server(config, Path(config_path))
        await server.start()
    except ListenError:
        for runner in runners:
            await runner.cleanup()
        raise
    seeded = seed_demo(emulator)
    secret, token_id = seeded["m2m_token_secret"], seeded["m2m_token_id"]
    partner = seed_issuer_demo(issuer)
    (resource,) = partner.resources
    token_request = (
        f"curl -s -u {partner.client_id}:{partner.client_secret} -d grant_type=client_credentials "
        f"-d resource={resource} {issuer_url}/oauth2/token"
    )

    base = f"http://{config.listen.host}:{config.listen.port}"
    print(
        "\n".join(
            [
                "",
                f"clerk-auth-proxy demo: proxy {base}, admin http://{config.admin.host}:{config.admin.port}",
                f"  Clerk emulator {clerk_url}, issuer emulator {issuer_url}, "
                f"demo upstream {upstream_url}",
                "",
                "A partner call with a valid M2M token (expect 200 and the principal the API saw):",
                f"  curl -s -H 'Authorization: Bearer {secret}' {base}/api/v1/matches",
                "The #1 partner mistake, the token id instead of the secret (401 token_id_not_secret):",
                f"  curl -s -H 'Authorization: Bearer {token_id}' {base}/api/v1/matches",
                "A client-credentials partner of another OAuth issuer (Authgear's tokens, from the",
                "issuer emulator): get a token with its client id and secret, then call the API:",
                f"  TOKEN=$({token_request} | python3 -c 'import json,sys; "
                'print(json.load(sys.stdin)["access_token"])\')',
                f'  curl -s -H "Authorization: Bearer $TOKEN" {base}/api/v1/matches',
                "No token (401 token_missing):",
                f"  curl -s {base}/api/v1/matches",
                "Metrics:",
                f"  curl -s http://{config.admin.host}:{config.admin.port}/metrics | grep authproxy_",
                "",
                json.dumps(
                    {
                        "m2m_token_secret": secret,
                        "m2m_token_id": token_id,
                        "issuer_token_request": token_request,
                    }
                ),
                "",
            ]
        ),
        flush=True,
    )
    try:
        await server.run()
    finally:
        for runner in runners:
            await runner.cleanup()


def run_demo(config_path: str) -> int:
    configure_logging("INFO")
    logging.getLogger("proxy.access").setLevel(logging.INFO)
    try:
        asyncio.run(_demo(config_path))
    except ListenError as exc:
        exc.log()
        return 2
    return 0
