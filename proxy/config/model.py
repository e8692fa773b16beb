"""The typed configuration: one frozen `Config` and its parts, with their defaults.

What each key means is in docs/configuration.md; `config` builds these from YAML and
validates every value, so code holding a `Config` never re-checks one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from proxy.core.timeouts import ConnectionPolicy

DEFAULT_CONNECTIONS = ConnectionPolicy()

AuthMode = Literal["public", "optional", "required"]
PRINCIPAL_TYPES = ("machine", "user", "api_key", "oauth", "anonymous")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int
    # listen only: plain requests skip aiohttp's server and client (frontdoor.py).
    fast_path: bool = True


@dataclass(frozen=True, slots=True)
class Upstream:
    url: str
    connect_timeout: float = 5.0
    # Above Socket.IO's pingInterval + pingTimeout (45 s) so long polls survive.
    read_timeout: float = 60.0
    # 0 means unlimited.
    max_body_size: int = 10 * 1024 * 1024
    # Path the admin /readyz probes; any HTTP answer (even 404) means "up".
    readiness_path: str = "/"
    # Concurrent upstream connections; 0: unlimited. Every open WebSocket and every
    # pending Socket.IO long poll holds one, so a low cap queues live traffic.
    pool_size: int = 0


@dataclass(frozen=True, slots=True)
class Clerk:
    api_url: str
    secret_key: str = field(repr=False)
    machine_secret_key: str = field(default="", repr=False)
    # A human name for the Clerk instance this environment trusts (logged at start-up).
    instance: str = "default"
    # "production", "development", or "" when neither it nor `environment` says.
    instance_type: str = ""
    # Expected JWT `iss` (the instance's Frontend API URL); unchecked when empty.
    issuer: str = ""
    authorized_parties: tuple[str, ...] = ()
    timeout: float = 5.0
    jwks_cache_seconds: float = 3600.0
    # An unknown `kid` triggers a JWKS refetch at most this often.
    jwks_min_refetch_seconds: float = 30.0
    api_version: str = "2026-05-12"
    clock_skew_seconds: float = 5.0
    # A token the cache does not know waits at most this long for its verification, then
    # gets 503; the call goes on and fills the cache for the retry.
    miss_deadline: float = 1.0
    # The pause after a failed verify call (5xx, timeout, no connection): doubled per
    # consecutive failure, jittered, capped; Clerk's Retry-After is a floor.
    backoff_initial: float = 0.1
    backoff_max: float = 10.0


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the shared level is, parsed from `cache.shared.url`."""

    kind: Literal["single", "sentinel", "cluster"]
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    service: str = ""  # Sentinel: the monitored primary's name


@dataclass(frozen=True, slots=True)
class SharedCache:
    """`cache.shared`: the second level in Redis/Valkey (docs/verification.md)."""

    target: RedisTarget
    url: str  # as configured, without credentials (for logs)
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # Every Redis call is bounded by this; a few ms, so a slow Redis costs little.
    timeout: float = 0.01
    connect_timeout: float = 0.5
    breaker_failures: int = 5
    breaker_seconds: float = 5.0
    # How long a process waits for another one's verification of the same token.
    flight_wait: float = 1.0
    # The cost guard's buckets in Redis: the configured rates hold for the whole cluster.
    budget: bool = True
    # Revocations are re-read this often (and on every reconnect) in case one was missed.
    resync_seconds: float = 5.0
    key_prefix: str = "clerk-auth-proxy"


@dataclass(frozen=True, slots=True)
class MachineRule:
    """One way an issuer marks a client-credentials token; any rule that matches does."""

    sub: str | None = None  # `sub` equals this, with `{client_id}` replaced
    claim: str | None = None  # this claim is present (and equals `value`, when given)
    value: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """How an issuer's verified claims become a Principal (docs/configuration.md)."""

    client_id: tuple[str, ...] = ("client_id",)  # first present claim names the client
    machine: tuple[MachineRule, ...] = (MachineRule(sub="{client_id}"),)  # RFC 9068 §2.2
    scopes: tuple[str, ...] = ("scope",)  # first present; a string is space-separated
    forward: tuple[str, ...] = ()  # claims passed on in X-Auth-Claims
    require: tuple[tuple[str, str], ...] = ()  # (claim, value) pairs that must hold


@dataclass(frozen=True, slots=True)
class Introspection:
    """RFC 7662 introspection of this issuer's opaque tokens."""

    client_id: str
    client_secret: str = field(repr=False)
    endpoint: str = ""  # empty: the discovery document's introspection_endpoint
    auth_method: str = "client_secret_basic"  # or client_secret_post
    token_prefix: str = ""  # which opaque tokens are this issuer's; empty: every other one


@dataclass(frozen=True, slots=True)
class Issuer:
    """An OAuth 2.0 issuer beside Clerk whose access tokens this API accepts."""

    name: str
    issuer: str  # compared exactly with a token's `iss`
    audiences: tuple[str, ...]
    preset: str = "rfc9068"
    jwks_url: str = ""  # empty: from discovery
    algorithms: tuple[str, ...] = ("RS256",)
    token_types: tuple[str, ...] = ("at+jwt",)  # header `typ`; "" accepts a token without one
    leeway_seconds: float = 5.0
    claims: ClaimMapping = ClaimMapping()
    jwks_cache_seconds: float = 3600.0
    jwks_min_refetch_seconds: float = 30.0
    timeout: float = 5.0
    introspection: Introspection | None = None


@dataclass(frozen=True, slots=True)
class Cache:
    ttl_seconds: float = 60.0
    negative_ttl_seconds: float = 10.0
    max_entries: int = 100_000
    # The stale window: past its fresh period an entry is served at once while one
    # background check runs, and while checks fail. 0 turns it off.
    stale_if_error_seconds: float = 0.0
    # The second level in Redis/Valkey; None: this process's cache only.
    shared: SharedCache | None = None
    # The last this fraction of a fresh period is where a request starts a background
    # re-verification (at a point jittered per token); 0 turns refresh ahead off.
    refresh_ahead: float = 0.2


@dataclass(frozen=True, slots=True)
class Bucket:
    rate: float  # tokens per second
    burst: int


DEFAULT_GLOBAL_BUCKET = Bucket(rate=50.0, burst=200)
DEFAULT_PER_IP_BUCKET = Bucket(rate=5.0, burst=20)


@dataclass(frozen=True, slots=True)
class VerificationBudget:
    enabled: bool = True
    global_: Bucket = DEFAULT_GLOBAL_BUCKET
    per_ip: Bucket = DEFAULT_PER_IP_BUCKET
    # Unknown tokens are charged to their source: the client address masked to these.
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    # The share of the global burst only re-verifications of known-valid tokens may use.
    reserved_for_known: float = 0.25


@dataclass(frozen=True, slots=True)
class IssuerRule:
    """What a route asks of the principals of one issuer (routes[].issuers.<name>)."""

    scopes: tuple[str, ...] = ()
    clients: frozenset[str] | None = None  # allowed principal ids (client ids of machines)
    principal_types: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    path: str
    methods: frozenset[str] | None = None  # None: any method
    auth: AuthMode = "required"
    scopes: tuple[str, ...] = ()
    principal_types: frozenset[str] | None = None  # None: any authenticated type
    # Allow-lists of what Clerk itself asserts: machine ids (`mch_…`, the `sub` Clerk sets
    # on M2M tokens) and OAuth application client ids. None: not restricted.
    machines: frozenset[str] | None = None
    oauth_clients: frozenset[str] | None = None
    # None: every issuer, and the rules above are Clerk's only. Else the issuers accepted,
    # each with its own rules; "clerk" names Clerk (whose rules are the ones above).
    issuers: tuple[tuple[str, IssuerRule], ...] | None = None


@dataclass(frozen=True, slots=True)
class Headers:
    prefix: str = "X-Auth-"
    # Honoured when a client sends it, made when it does not; "" leaves requests unnamed.
    request_id: str = "X-Request-Id"


@dataclass(frozen=True, slots=True)
class WebSocket:
    max_message_size: int = 1024 * 1024
    allowed_origins: tuple[str, ...] = ()  # empty: any Origin
    compression: bool = True  # permessage-deflate towards the client
    upstream_compression: bool = False  # loopback: deflate costs CPU, saves nothing
    heartbeat_seconds: float = 0.0  # 0: relay the peers' own pings only


@dataclass(frozen=True, slots=True)
class Shutdown:
    # How long in-flight requests get to finish after the listener closes.
    grace_period: float = 25.0
    # How long /readyz answers 503 while still serving, before the listener closes, so
    # Kubernetes removes the pod from its endpoints before connections are refused.
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Logging:
    level: str = "INFO"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class Revocation:
    """`revocation`: POST /revoke on its own listener (off without a secret)."""

    secret: str = field(default="", repr=False)
    # How long a revoked id stays refused when its expiry is not known.
    default_ttl_seconds: float = 86_400.0
    # The control listener: loopback by default, never the scrape port (an operator
    # reaches it with `kubectl exec … clerk-auth-proxy revoke`).
    listen: Listen = Listen("127.0.0.1", 9091, fast_path=False)


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    environment: str
    listen: Listen
    admin: Listen
    upstream: Upstream
    clerk: Clerk
    cache: Cache
    verification_budget: VerificationBudget
    routes: tuple[Route, ...]
    default_route: Route
    forward_authorization: bool
    headers: Headers
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    websocket: WebSocket
    shutdown: Shutdown
    logging: Logging
    workers: int = 1
    revocation: Revocation = Revocation()
    issuers: tuple[Issuer, ...] = ()
    connections: ConnectionPolicy = DEFAULT_CONNECTIONS
    # The forward-auth listener (request.forward_auth): ingresses ask it to judge a
    # request they describe. None: off.
    forward_auth: Listen | None = None
    # Not part of what the config says (two files saying the same compare equal):
    # key path -> the environment variables its value was read from, so a message can
    # name the one to change; what is valid but probably wrong, as (key, why).
    variables: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    warnings: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # The files it was read from (the config file, secret files), to notice a change.
    inputs: tuple[str, ...] = field(default=(), compare=False)
