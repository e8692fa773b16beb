"""The client-facing aiohttp application and the request path.

`Proxy.handle` is the whole request path, top to bottom:
resolve route → extract token → verify (cache) → authorize → rewrite headers → forward.
Everything derived from one config lives in a `runtime.Runtime` that a reload swaps
whole, so a request never sees half of an old config and half of a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

import aiohttp
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict
from yarl import URL

from proxy.auth import tokens
from proxy.config.load import Config
from proxy.core import errors
from proxy.core.background import Background
from proxy.core.errors import ProxyError, internal_error
from proxy.core.principal import ANONYMOUS, Principal, Recent, Verifier
from proxy.core.timeouts import clock_of
from proxy.http.forward import ClientGone, new_session
from proxy.http.headers import ClientHop, client_ip
from proxy.http.upstream import UpstreamPool
from proxy.observe.correlation import new_request_id, traceparent_field
from proxy.observe.logs import AccessLog, worker_index
from proxy.observe.metrics import Metrics
from proxy.realtime import relays
from proxy.request import lifetime
from proxy.request.dispatch import dispatch, expect_later
from proxy.request.routed import AiohttpFields, Authenticated, HeadFields, Routed
from proxy.request.runtime import Runtime, build_runtime, same_verification

log = logging.getLogger("proxy")

CLERK_POOL_SIZE = 32
# A C static under mypyc: no module lookup per call.
_perf_counter: Final = time.perf_counter
_monotonic: Final = time.monotonic

VerifierFactory = Callable[[Config, aiohttp.ClientSession, Metrics], Verifier]


def clerk_verifier(config: Config, session: aiohttp.ClientSession, metrics: Metrics) -> Verifier:
    from proxy.auth.verifier import ClerkVerifier

    return ClerkVerifier(config, session, metrics)


class Proxy:
    """State shared by the proxy and admin apps for one process."""

    def __init__(self, config: Config, metrics: Metrics, verifier_factory: VerifierFactory) -> None:
        self.metrics = metrics
        self.verifier_factory = verifier_factory
        self.draining = False
        self._config = config
        # What the keys that only a restart applies say while this process lives.
        self._started = config
        self._session: aiohttp.ClientSession | None = None
        # Clerk gets its own small pool so upstream load can never starve verification.
        self._clerk_session: aiohttp.ClientSession | None = None
        self._runtime: Runtime | None = None
        # The fast path's raw upstream connections (frontdoor.py, upstream.py); the
        # listener's drain has ended every client of theirs before the app's cleanup.
        self._fast_pool: UpstreamPool | None = None
        self._retired = Background()
        # Open WebSockets (closed with 1001 on shutdown) and polling CONNECT grants; one
        # per process so a config reload keeps them.
        self.ws_registry = relays.WebSocketRegistry()
        self.access_log = AccessLog(worker=worker_index())

    # -- lifetime ------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Proxy used outside its app's lifetime"
        return self._session

    @property
    def fast_pool(self) -> UpstreamPool:
        assert self._fast_pool is not None, "Proxy used outside its app's lifetime"
        return self._fast_pool

    def warm(self) -> None:
        """Fetch what the verifier can fetch ahead of the first request (other issuers'
        discovery and keys), in the background: called once the listeners are bound, so a
        process that cannot start does not also report issuers it never used."""
        warm = getattr(self.runtime.verifier, "warm", None)
        if warm is not None:
            warm()

    @property
    def config(self) -> Config:
        """The live config: the last one loaded or reloaded."""
        return self._config

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "Proxy used outside its app's lifetime"
        return self._runtime

    async def _build(self, config: Config, verifier: Verifier | None = None) -> Runtime:
        if verifier is None:
            assert self._clerk_session is not None
            verifier = self.verifier_factory(config, self._clerk_session, self.metrics)
            start = getattr(verifier, "start", None)
            if start is not None:
                await start()
        return build_runtime(config, verifier)

    def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """For `cleanup_ctx`: the sessions, the fast path's pool and the first Runtime,
        for the app's life."""
        return lifetime.paired(self._start, self._stop)

    async def _start(self) -> None:
        up = self._config.upstream
        self._session = new_session(
            connect_timeout=up.connect_timeout, read_timeout=up.read_timeout, pool_size=up.pool_size
        )
        clerk = self._config.clerk
        self._clerk_session = new_session(
            connect_timeout=clerk.timeout, read_timeout=clerk.timeout, pool_size=CLERK_POOL_SIZE
        )
        self._fast_pool = _fast_pool(self._config)
        try:
            self._runtime = await self._build(self._config)
        except BaseException:
            await self._stop()
            raise

    async def _stop(self) -> None:
        if self._fast_pool is not None:
            self._fast_pool.close()
        self._retired.cancel()
        if self._runtime is not None:
            await _close_verifier(self._runtime.verifier)
        if self._session is not None:
            await self._session.close()
        if self._clerk_session is not None:
            await self._clerk_session.close()
        self.access_log.flush()

    async def reload(self, config: Config) -> None:
        """Swap in a new, already-validated config. In-flight requests finish on the old one."""
        old = self.runtime
        keep = old.verifier if same_verification(old.config, config) else None
        self._runtime = await self._build(config, keep)
        if old.config.upstream != config.upstream:
            # In-flight exchanges finish on their connections; new ones use the new pool.
            self.fast_pool.close()
            self._fast_pool = _fast_pool(config)
        self._config = config
        if keep is None:
            self.warm()
            # Requests in flight may still hold the old verifier; close it once they are done.
            self._retired.spawn(_close_later(old.verifier, config.shutdown.grace_period))
        # Against what runs, not the previous file: a reload that puts `listen` back to
        # the bound address changes nothing.
        started = self._started
        for changed, what in (
            (started.listen != config.listen, "listen"),
            (started.admin != config.admin, "admin"),
            (started.forward_auth != config.forward_auth, "forward_auth"),
            (
                (started.revocation.secret == "") != (config.revocation.secret == "")
                or started.revocation.listen != config.revocation.listen,
                "revocation.listen (or revocation turned on or off)",
            ),
            (started.workers != config.workers, "workers"),
            (started.upstream.pool_size != config.upstream.pool_size, "upstream.pool_size"),
        ):
            if changed:
                log.warning("config reload: %s changed; it takes effect on restart", what)

    # -- the request path ----------------------------------------------------------
    # `handle` (aiohttp) and `frontdoor.FrontDoor` (the fast path) run the same steps,
    # in this order: route → authenticate (cache first) → admit → forward → finished.

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rt = self.runtime
        request_id, traceparent = _correlate(rt, request)
        ex = Exchange(request, request_id, traceparent)
        try:
            check_request(request)
            hop = ClientHop(request.remote or "", request.scheme, request.host)
            routed = self.route(rt, request.method, request.raw_path, AiohttpFields(request), hop)
            ex.route_name = routed.route.name
            authenticated = self.authenticate_cached(rt, routed)
            if authenticated is None:
                authenticated = await self.authenticate(rt, routed)
            ex.principal, ex.why = authenticated
            principal = self.authorize(rt, routed, authenticated)
            upstream_headers = CIMultiDict(
                rt.rewrite.items(request.headers.items(), principal, hop)
            )
            if request_id is not None and rt.correlation.name not in upstream_headers:
                upstream_headers[rt.correlation.name] = request_id
            url = rt.target.url(routed.resolved.path, routed.resolved.query)
            response = await dispatch(
                request,
                session=self.session,
                rt=rt,
                metrics=self.metrics,
                registry=self.ws_registry,
                url=url,
                upstream_headers=upstream_headers,
                principal=ex.principal,
                ip=routed.ip,
                refusal=None if ex.why is None else ex.why.code,
            )
            ex.status = response.status
            return self.last_if_draining(response)
        except ProxyError as refusal:
            answer = ex.refuse(refusal)
            if refusal.ends_connection:
                answer.force_close()
            if request_id is not None:
                answer.headers[rt.correlation.name] = request_id
            return self.last_if_draining(answer)
        except ClientGone:
            ex.gone()
            raise ConnectionResetError("client went away") from None
        except asyncio.CancelledError:
            ex.gone()
            raise
        except ConnectionError:
            raise  # the client went away while an answer was written: nobody to tell
        except Exception as exc:
            failure = internal_error(exc, "aiohttp")
            ex.status = failure.status
            failed = web.Response(status=ex.status, body=failure.body(), headers=failure.headers())
            failed.force_close()
            return failed
        finally:
            ex.end(self, rt)

    def last_if_draining(self, response: web.StreamResponse) -> web.StreamResponse:
        """While draining, an answer not yet started says `Connection: close` (a streamed
        one ends its connection as it turns idle: the listener closes idle ones)."""
        if self.draining and not response.prepared:
            response.force_close()
        return response

    def route(
        self, rt: Runtime, method: str, raw_target: str, fields: HeadFields, hop: ClientHop
    ) -> Routed:
        """Which route, for whom (client IP) and with which token. Raises 400s."""
        resolved = rt.policy.resolve(method, raw_target)
        route = resolved.route
        cfg = rt.config
        ip = (
            client_ip(hop, fields.getall("X-Forwarded-For"), cfg.trusted_proxies)
            if cfg.trusted_proxies
            else hop.peer_ip
        )
        authorization = fields.getall("Authorization")
        if route.auth == "public":
            tokens.one_authorization(authorization)  # read no token, but refuse two
            token = None
        else:
            token = fields.bearer(authorization)
        return Routed(resolved, route, token, ip)

    def authenticate_cached(
        self, rt: Runtime, routed: Routed, recent: Recent | None = None
    ) -> Authenticated | None:
        """The answer when it needs no waiting (public route, no token, cache hit).
        `recent` is the client connection's memo of its last hit, where there is one."""
        if routed.token is None:
            return ANONYMOUS, None
        principal = rt.verifier.cached(routed.token, recent)
        return None if principal is None else (principal, None)

    async def authenticate(self, rt: Runtime, routed: Routed) -> Authenticated:
        """Who the caller is. On an `optional` route a bad token means anonymous (the
        documented Socket.IO fallback); Clerk being unavailable never does."""
        if routed.token is None:
            return ANONYMOUS, None
        try:
            return await rt.verifier.verify(routed.token, routed.ip), None
        except ProxyError as refusal:
            if routed.route.auth == "optional" and refusal.is_auth_failure:
                self.metrics.auth_decisions.labels(
                    refusal.token_type or "unknown", "anonymous_fallback"
                ).inc()
                return ANONYMOUS, refusal
            self._decided_refusal(None, refusal)
            raise

    def authorize(self, rt: Runtime, routed: Routed, authenticated: Authenticated) -> Principal:
        """The principal, when it may use the route; raises 401/403."""
        principal, token_error = authenticated
        try:
            rt.policy.authorize(routed.route, principal, token_error=token_error)
        except ProxyError as refusal:
            self._decided_refusal(principal, refusal)
            raise
        self.metrics.decision(principal.token_type or "none", "allowed").inc()
        return principal

    def finished(
        self,
        rt: Runtime,
        route_name: str,
        method: str,
        status: int,
        started: float,
        principal: Principal,
        remote: str | None,
        why: ProxyError | None,
        request_id: str | None,
        traceparent: bytes | None,
    ) -> None:
        elapsed = _perf_counter() - started
        self.metrics.observe_request(route_name, method, status, elapsed)
        if rt.access_log:
            self.access_log.record(
                method,
                route_name,
                status,
                elapsed,
                principal,
                remote,
                why,
                request_id,
                traceparent,
            )

    def _decided_refusal(self, principal: Principal | None, refusal: ProxyError) -> None:
        token_type = refusal.token_type or (principal.token_type if principal else None)
        self.metrics.decision(token_type or "none", refusal.code).inc()


# Where the aiohttp door keeps a request's id for its answer (`_answer_request_id`).
REQUEST_ID = web.RequestKey("request_id", str)


def _correlate(rt: Runtime, request: web.Request) -> tuple[str | None, bytes | None]:
    """The request's id (the client's, or one made now) and its traceparent."""
    correlation = rt.correlation
    traceparent = traceparent_field(request.headers.get("traceparent"))
    if not correlation.enabled:
        return None, traceparent
    request_id = request.headers.get(correlation.name)
    if request_id is None:
        request_id = request[REQUEST_ID] = new_request_id()
    return request_id, traceparent


async def _answer_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """An answer to a request whose id was made here carries it (the client had none); an
    upstream's answer that names it already keeps its own. Refusals carry any id."""
    request_id = request.get(REQUEST_ID)
    proxy = request.app[PROXY]
    name = proxy.runtime.correlation.name
    if request_id is not None and name and name not in response.headers:
        response.headers[name] = request_id


def check_request(request: web.Request) -> None:
    """What a request must be beyond what aiohttp's parser checks, before either door
    routes it (the fast path hands every such request to aiohttp's door): the refusals
    nginx makes that aiohttp does not. 505 for a major version other than 1 (aiohttp reads
    `HTTP/2.0` or `HTTP/0.9` request lines and would answer in them, and refuses to chunk
    for them); 400 for an HTTP/1.1 request without exactly one Host (RFC 9112 §3.2;
    aiohttp refuses two but accepts none), for an HTTP/1.0 one with Transfer-Encoding
    (RFC 9112 §6.1) and for two Expect fields. Each ends the connection
    (`ProxyError.ends_connection`)."""
    version = request.version
    if version.major != 1:
        # The refusal is answered in HTTP/1.1, as nginx does: aiohttp answers in the
        # request's version, which no HTTP/1 client reads.
        request._version = HttpVersion11
        request._cache.pop("version", None)  # reified
        raise ProxyError(
            errors.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and HTTP/1.1 are served here"
        )
    if version.minor == 0 and "Transfer-Encoding" in request.headers:
        # RFC 9112 §6.1: the framing is faulty (an HTTP/1.0 hop may read no body, and the
        # chunks as the next request); nginx refuses it too.
        raise errors.bad_request("an HTTP/1.0 request cannot carry Transfer-Encoding")
    if len(request.headers.getall("Expect", ())) > 1:
        # The proxy acts on Expect (it answers 100 Continue itself): two are ambiguous,
        # and nginx refuses a second Expect line too.
        raise errors.bad_request("send at most one Expect header")
    if version.minor >= 1 and len(request.headers.getall("Host", ())) != 1:
        raise errors.bad_request("an HTTP/1.1 request needs exactly one Host field")


class Exchange:
    """One request on aiohttp's side (`Proxy.handle`, the forward-auth listener), from its
    head to `end`: what `Proxy.finished` is told, filled in as the handler learns it. (The
    fast path keeps the same on its connection, `frontdoor.FrontDoor`.)"""

    def __init__(
        self, request: web.Request, request_id: str | None, traceparent: bytes | None
    ) -> None:
        self.started = _perf_counter()
        self.method = request.method
        self.remote = request.remote
        self.route_name = "unmatched"
        self.status = 500
        self.principal: Principal = ANONYMOUS
        self.why: ProxyError | None = None
        self.request_id, self.traceparent = request_id, traceparent
        # The connection's clock (proxy.core.timeouts): the head is in; what follows is
        # timed by the body's rate, then by the upstream. (An asking proxy keeps its
        # connections open: between questions one is idle, not a head arriving.)
        self.clock = clock = clock_of(request.transport)
        if clock is not None:
            clock.head_done(_monotonic())

    def refuse(self, refusal: ProxyError) -> web.Response:
        """The answer to a refusal (its status, JSON body and headers: docs/spec.md), as this
        exchange's outcome."""
        self.why, self.status = refusal, refusal.status
        return refusal.response()

    def gone(self) -> None:
        """The connection ended before the answer: nginx's 499 "client closed request"
        (never sent), or 503 when the drain's deadline cut it (the proxy ended it, not the
        client)."""
        clock = self.clock
        self.status = 503 if clock is not None and clock.cut else 499

    def end(self, proxy: Proxy, rt: Runtime) -> None:
        if self.clock is not None:
            self.clock.answered(_monotonic())
        proxy.finished(
            rt,
            self.route_name,
            self.method,
            self.status,
            self.started,
            self.principal,
            self.remote,
            self.why,
            self.request_id,
            self.traceparent,
        )


def _fast_pool(config: Config) -> UpstreamPool:
    up = config.upstream
    url = URL(up.url)
    return UpstreamPool(
        url.raw_host or "127.0.0.1",
        url.port or 80,
        connect_timeout=up.connect_timeout,
        read_timeout=up.read_timeout,
        limit=up.pool_size,
    )


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
    app.on_response_prepare.append(_answer_request_id)
    app.cleanup_ctx.append(proxy.lifespan)
    # The listener's drain gave open sockets their grace period and closed them with
    # 1001 (fastpath.listener); any left when aiohttp shuts down are closed at once.
    app.on_shutdown.append(lambda _: proxy.ws_registry.close_all())
    app.router.add_route("*", "/{tail:.*}", proxy.handle, expect_handler=expect_later)
    return app
