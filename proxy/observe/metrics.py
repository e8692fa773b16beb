"""Prometheus metrics, one registry per app so tests can build many apps side by side.

Labels are closed sets (route names from config, token types, results, status codes):
never a path, a token or a principal id. The metrics updated on every request are
`loop_metrics` types (no lock per update); the rest are prometheus-client's.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from proxy import __version__, compiled
from proxy.core.errors import TIMEOUT, ProxyError, upstream_failure
from proxy.observe.loop_metrics import CounterChild, HistogramChild, LoopCounter, LoopHistogram

# `*_created` series double the scrape size and no dashboard or alert of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
MAX_CACHED_CHILDREN = 4096

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = LoopCounter(
            "authproxy_requests_total",
            "Requests answered, by route name, method and status code.",
            ["route", "method", "code"],
            registry=r,
        )
        self.request_duration = LoopHistogram(
            "authproxy_request_duration_seconds",
            "Time from request received to response finished, by route name.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = LoopHistogram(
            "authproxy_upstream_duration_seconds",
            "Time until the upstream answered with its response headers.",
            [],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "authproxy_upstream_errors_total",
            "Upstream failures by kind (unavailable, timeout).",
            ["kind"],
            registry=r,
        )
        self.auth_decisions = LoopCounter(
            "authproxy_auth_decisions_total",
            "Authentication/authorization decisions by token type and result.",
            ["token_type", "result"],
            registry=r,
        )
        self.verify_cache = LoopCounter(
            "authproxy_verify_cache_total",
            "Verification cache lookups: hit, miss, coalesced, negative_hit, stale (served from "
            "the stale window).",
            ["result"],
            registry=r,
        )
        self.clerk_requests = Counter(
            "authproxy_clerk_requests_total",
            "Calls to Clerk's Backend API by endpoint and HTTP status (or 'error').",
            ["endpoint", "status"],
            registry=r,
        )
        self.clerk_duration = Histogram(
            "authproxy_clerk_request_duration_seconds",
            "Clerk Backend API call latency by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.clerk_setting_refusals = Counter(
            "authproxy_clerk_setting_refusals_total",
            "Verifications Clerk refused because of an instance setting (HTTP 422), by "
            "endpoint and Clerk's error code (e.g. api_keys_not_enabled).",
            ["endpoint", "code"],
            registry=r,
        )
        self.issuer_requests = Counter(
            "authproxy_issuer_requests_total",
            "Calls to other OAuth issuers (discovery, jwks, introspect) by HTTP status (or "
            "'timeout', 'error').",
            ["issuer", "endpoint", "status"],
            registry=r,
        )
        self.issuer_duration = Histogram(
            "authproxy_issuer_request_duration_seconds",
            "Latency of calls to other OAuth issuers by endpoint.",
            ["issuer", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.budget_rejections = Counter(
            "authproxy_verification_budget_rejections_total",
            "Verifications refused by the cost guard, by scope (per_ip, global), and background "
            "re-verifications of known tokens deferred because even the reserve was empty (known).",
            ["scope"],
            registry=r,
        )
        self.clerk_calls_held = Counter(
            "authproxy_clerk_calls_held_total",
            "Clerk calls (verify, JWKS) not made: Clerk's Retry-After running (retry_after), "
            "backing off after failures (backoff), or the one probe call still out (probe).",
            ["reason"],
            registry=r,
        )
        self.issuer_calls_held = Counter(
            "authproxy_issuer_calls_held_total",
            "Calls to another issuer (discovery, jwks, introspect) not made: its Retry-After "
            "running (retry_after), backing off after failures (backoff), the one probe still "
            "out (probe), or paused after it refused the proxy's credentials (refused).",
            ["issuer", "reason"],
            registry=r,
        )
        self.verify_background = Counter(
            "authproxy_verify_background_total",
            "Background re-verifications of cached tokens by trigger (ahead: before the fresh "
            "period ends; stale: in the stale window) and result (valid, rejected, unavailable, "
            "deferred: not started while Clerk, the token's issuer or the budget said wait).",
            ["trigger", "result"],
            registry=r,
        )
        self.verification_deadline = Gauge(
            "authproxy_verification_deadline_seconds",
            "How long a token the cache does not know waits for its verification (clerk.miss_deadline).",
            registry=r,
        )
        self.verification_deadline_exceeded = Counter(
            "authproxy_verification_deadline_exceeded_total",
            "Requests answered 503 at the miss deadline while their verification went on.",
            registry=r,
        )
        self.websocket_connections = Gauge(
            "authproxy_websocket_connections",
            "Open client WebSocket connections.",
            registry=r,
        )
        self.websocket_messages = Counter(
            "authproxy_websocket_messages_total",
            "WebSocket messages relayed, by direction (client_to_upstream, upstream_to_client).",
            ["direction"],
            registry=r,
        )
        self.socketio_connects = Counter(
            "authproxy_socketio_connects_total",
            "Socket.IO CONNECT packets rewritten, by principal type.",
            ["principal_type"],
            registry=r,
        )
        self.socketio_disconnects = Counter(
            "authproxy_socketio_expiry_disconnects_total",
            "Socket.IO namespaces and WebSockets closed because the principal's token expired.",
            registry=r,
        )
        self.client_connections = Gauge(
            "authproxy_client_connections",
            "Open client connections, both doors (the fast path's and aiohttp's).",
            registry=r,
        )
        self.client_connections_ceiling = Gauge(
            "authproxy_client_connections_ceiling",
            "Client connections the process holds at most (connections.max_client_connections, "
            "or what its file descriptors allow after connections.descriptor_reserve); past "
            "it, 503 too_many_connections.",
            registry=r,
        )
        self.connections_closed = Counter(
            "authproxy_connections_closed_total",
            "Client connections the proxy closed, by reason (idle, head_timeout, body_rate, "
            "websocket_idle, per_address_limit, ceiling: refused at accept, drain_idle, "
            "drain_deadline).",
            ["reason"],
            registry=r,
        )
        self.config_reloads = Counter(
            "authproxy_config_reloads_total",
            "Configuration reloads by result (ok, failed).",
            ["result"],
            registry=r,
        )
        # Prometheus's own names for its own config (prometheus_config_last_reload_*), so
        # the alerts operators already write for Prometheus read the same here.
        self.config_info = Gauge(
            "authproxy_config_info",
            "The live config, by content hash (secrets excluded): 1 for the one serving.",
            ["hash"],
            registry=r,
        )
        self.config_last_reload_successful = Gauge(
            "authproxy_config_last_reload_successful",
            "Whether the last config load or reload succeeded (1) or failed (0).",
            registry=r,
        )
        self.config_last_reload_success_timestamp = Gauge(
            "authproxy_config_last_reload_success_timestamp_seconds",
            "When the live config was loaded (Unix time).",
            registry=r,
        )
        # process_* (RSS, CPU, open and maximum descriptors, start time), as every
        # Prometheus client exports them by default on its global registry.
        ProcessCollector(registry=r)
        # compiled="false": the request path fell back to pure Python (about twice the CPU).
        self.build_info = Gauge(
            "authproxy_build_info", "Build information.", ["version", "compiled"], registry=r
        )
        self.build_info.labels(version=__version__, compiled=str(compiled()).lower()).set(1)

        # Label children looked up once per distinct label set, not once per request;
        # typed, so that compiled calls to them are direct.
        self._request_children: dict[tuple[str, str, int], tuple[CounterChild, HistogramChild]] = {}
        # Both label values come from closed sets (token kinds, error codes).
        self._decision_children: dict[tuple[str, str], CounterChild] = {}

    def config_loaded(self, digest: str, *, reload: bool) -> None:
        """A config (the first, or a reload) is live."""
        if reload:
            self.config_reloads.labels("ok").inc()
        self.config_info.clear()
        self.config_info.labels(digest).set(1)
        self.config_last_reload_successful.set(1)
        self.config_last_reload_success_timestamp.set_to_current_time()

    def config_reload_failed(self) -> None:
        """The old config keeps serving; `config_info` still names it."""
        self.config_reloads.labels("failed").inc()
        self.config_last_reload_successful.set(0)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            # The method is client-controlled: unknown ones share one label value so a
            # client cannot grow the series count.
            label = method if method in KNOWN_METHODS else "other"
            children = (
                self.requests.labels(route, label, str(status)),
                self.request_duration.labels(route),
            )
            if len(self._request_children) < MAX_CACHED_CHILDREN:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def upstream_failed(self, cause: str) -> ProxyError:
        """Count an upstream failure (`core.errors`' cause) and return the client's 502/504."""
        self.count_upstream_failure(cause)
        return upstream_failure(cause)

    def count_upstream_failure(self, cause: str | None) -> None:
        """`upstream_errors` by kind: a timeout, or the upstream unavailable (any other cause)."""
        self.upstream_errors.labels(kind="timeout" if cause == TIMEOUT else "unavailable").inc()

    def decision(self, token_type: str, result: str) -> CounterChild:
        """The `auth_decisions` child for a (token type, result) pair, looked up once."""
        key = (token_type, result)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.auth_decisions.labels(token_type, result)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)
