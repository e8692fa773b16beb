"""The aiohttp applications (proxy and admin) and the request path.

`Proxy.handle` is the whole request path, top to bottom:
resolve route → extract token → verify (cache) → authorize → rewrite headers → forward.
Everything derived from one config lives in a `Runtime` that a reload swaps whole, so a
request never sees half of an old config and half of a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from . import tokens
from .config import Config, Route
from .errors import ProxyError
from .forward import ClientGone, UpstreamTarget, forward, new_session
from .headers import ClientHop, PrincipalHeaders, client_ip, for_upstream
from .metrics import Metrics
from .policy import Policy
from .principal import ANONYMOUS, Principal, Verifier

log = logging.getLogger("proxy")
access_log = logging.getLogger("proxy.access")

VerifierFactory = Callable[[Config, aiohttp.ClientSession, Metrics], Verifier]


def clerk_verifier(config: Config, session: aiohttp.ClientSession, metrics: Metrics) -> Verifier:
    from .verifier import ClerkVerifier

    return ClerkVerifier(config, session, metrics)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything derived from one validated Config."""

    config: Config
    policy: Policy
    verifier: Verifier
    names: PrincipalHeaders
    target: UpstreamTarget
    timeout: aiohttp.ClientTimeout


def _same_verification(a: Config, b: Config) -> bool:
    return (a.clerk, a.cache, a.verification_budget) == (b.clerk, b.cache, b.verification_budget)


class Proxy:
    """State shared by the proxy and admin apps for one process."""

    def __init__(self, config: Config, metrics: Metrics, verifier_factory: VerifierFactory) -> None:
        self.metrics = metrics
        self.verifier_factory = verifier_factory
        self.draining = False
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._runtime: Runtime | None = None
        self._retired: set[asyncio.Task[None]] = set()

    # -- lifetime ------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Proxy used outside its app's lifetime"
        return self._session

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "Proxy used outside its app's lifetime"
        return self._runtime

    async def _build(self, config: Config, verifier: Verifier | None = None) -> Runtime:
        if verifier is None:
            verifier = self.verifier_factory(config, self.session, self.metrics)
            start = getattr(verifier, "start", None)
            if start is not None:
                await start()
        up = config.upstream
        return Runtime(
            config=config,
            policy=Policy(config.routes, config.default_route),
            verifier=verifier,
            names=PrincipalHeaders.for_prefix(config.headers.prefix),
            target=UpstreamTarget(URL(up.url)),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=up.connect_timeout, sock_read=up.read_timeout
            ),
        )

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        up = self._config.upstream
        self._session = new_session(
            connect_timeout=up.connect_timeout, read_timeout=up.read_timeout, pool_size=up.pool_size
        )
        try:
            self._runtime = await self._build(self._config)
            yield
        finally:
            for task in self._retired:
                task.cancel()
            if self._runtime is not None:
                await _close_verifier(self._runtime.verifier)
            await self._session.close()

    async def reload(self, config: Config) -> None:
        """Swap in a new, already-validated config. In-flight requests finish on the old one."""
        old = self.runtime
        keep = old.verifier if _same_verification(old.config, config) else None
        self._runtime = await self._build(config, keep)
        self._config = config
        if keep is None:
            # Requests in flight may still hold the old verifier; close it once they are done.
            task = asyncio.create_task(_close_later(old.verifier, config.shutdown.grace_period))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        for changed, what in (
            (old.config.listen != config.listen, "listen"),
            (old.config.admin != config.admin, "admin"),
            (old.config.workers != config.workers, "workers"),
            (old.config.upstream.pool_size != config.upstream.pool_size, "upstream.pool_size"),
        ):
            if changed:
                log.warning("config reload: %s changed; it takes effect on restart", what)

    # -- the request path ----------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rt = self.runtime
        cfg = rt.config
        started = time.perf_counter()
        route_name = "unmatched"
        principal: Principal = ANONYMOUS
        status = 500
        try:
            resolved = rt.policy.resolve(request.method, request.raw_path)
            route = resolved.route
            route_name = route.name
            hop = ClientHop(request.remote or "", request.scheme, request.host)
            ip = client_ip(hop, request.headers.getall("X-Forwarded-For", ()), cfg.trusted_proxies)

            principal, token_error = await self._authenticate(rt, route, request, ip)
            rt.policy.authorize(route, principal, token_error=token_error)
            self._decided(principal, "allowed")

            upstream_headers = for_upstream(
                request.headers.items(),
                principal=principal,
                names=rt.names,
                hop=hop,
                trusted=cfg.trusted_proxies,
                forward_authorization=cfg.forward_authorization,
            )
            url = rt.target.url(resolved.path, resolved.query)
            response = await self._dispatch(request, rt, url, upstream_headers, principal, ip)
            status = response.status
            return response
        except ProxyError as refusal:
            status = refusal.status
            if refusal.status in (401, 403):
                self._decided_refusal(principal, refusal)
            return web.Response(
                status=refusal.status, body=refusal.body(), headers=refusal.headers()
            )
        except ClientGone:
            status = 499  # nginx's code for "client closed request"; never sent
            raise ConnectionResetError("client went away") from None
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(route_name, request.method, str(status)).inc()
            self.metrics.request_duration.labels(route_name).observe(elapsed)
            if cfg.logging.access_log and access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "method": request.method,
                        "route": route_name,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "principal_type": principal.type,
                        "client_ip": request.remote,
                    },
                )

    # --- dispatch: WebSocket / Socket.IO / plain HTTP ---------------------------------
    async def _dispatch(
        self,
        request: web.Request,
        rt: Runtime,
        url: URL,
        upstream_headers: CIMultiDict[str],
        principal: Principal,
        ip: str,
    ) -> web.StreamResponse:
        return await forward(
            request,
            session=self.session,
            url=url,
            headers=upstream_headers,
            max_body_size=rt.config.upstream.max_body_size,
            timeouts=rt.timeout,
            metrics=self.metrics,
        )

    # --- end of dispatch ------------------------------------------------------------

    async def _authenticate(
        self, rt: Runtime, route: Route, request: web.Request, ip: str
    ) -> tuple[Principal, ProxyError | None]:
        """Who the caller is. On an `optional` route a bad token means anonymous (the
        documented Socket.IO fallback); Clerk being unavailable never does."""
        if route.auth == "public":
            return ANONYMOUS, None
        token = tokens.extract_bearer(request.headers.getall("Authorization", ()))
        if token is None:
            return ANONYMOUS, None
        try:
            return await rt.verifier.verify(token, ip), None
        except ProxyError as refusal:
            if route.auth == "optional" and refusal.is_auth_failure:
                self.metrics.auth_decisions.labels(
                    refusal.token_type or "unknown", "anonymous_fallback"
                ).inc()
                return ANONYMOUS, refusal
            self._decided_refusal(None, refusal)
            raise

    def _decided(self, principal: Principal, result: str) -> None:
        self.metrics.auth_decisions.labels(principal.token_type or "none", result).inc()

    def _decided_refusal(self, principal: Principal | None, refusal: ProxyError) -> None:
        token_type = refusal.token_type or (principal.token_type if principal else None)
        self.metrics.auth_decisions.labels(token_type or "none", refusal.code).inc()


async def _close_verifier(verifier: Verifier) -> None:
    close = getattr(verifier, "close", None)
    if close is not None:
        await close()


async def _close_later(verifier: Verifier, delay: float) -> None:
    await asyncio.sleep(delay)
    await _close_verifier(verifier)


PROXY = web.AppKey("proxy", Proxy)


def create_app(
    config: Config,
    *,
    verifier: Verifier | None = None,
    verifier_factory: VerifierFactory | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """The client-facing app. Pass `verifier` (tests) or `verifier_factory`; by default
    tokens are verified against Clerk."""
    factory = verifier_factory or clerk_verifier
    if verifier is not None:
        fixed = verifier

        def factory(config: Config, session: aiohttp.ClientSession, metrics: Metrics) -> Verifier:
            return fixed

    proxy = Proxy(config, metrics or Metrics(), factory)
    app = web.Application(handler_args={"max_field_size": 16 * 1024})
    app[PROXY] = proxy
    app.cleanup_ctx.append(proxy.lifespan)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


def create_admin_app(proxy: Proxy) -> web.Application:
    """/healthz, /readyz and /metrics on their own listener, never exposed with the API."""
    admin = web.Application()
    admin[PROXY] = proxy
    admin.router.add_get("/healthz", _healthz)
    admin.router.add_get("/readyz", _readyz)
    admin.router.add_get("/metrics", _metrics)
    return admin


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    if proxy.draining:
        return web.json_response({"status": "draining"}, status=503)
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
        return web.json_response({"status": "upstream unavailable", "reason": reason}, status=503)
    return web.json_response({"status": "ready", "environment": rt.config.environment})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[PROXY].metrics.render()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra` fields become top-level keys."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would duplicate ours and print paths with query strings.
    logging.getLogger("aiohttp.access").disabled = True
