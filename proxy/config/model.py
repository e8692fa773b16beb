"""The typed configuration: one frozen `Config` and its parts, with their defaults.

The one source of every key: its name, default and kind (a float is seconds unless its
`key(kind=...)` says otherwise), from which `load` reads YAML and `schema` writes the
chart's values.schema.json. What each key means is in docs/configuration.md; code
holding a `Config` never re-checks a value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from proxy.config.keys import (
    ABSOLUTE_PATH,
    EXACT_URL,
    FRACTION,
    HTTP_URL,
    IPV4_PREFIX,
    IPV6_PREFIX,
    ISSUER_URL,
    OPTIONAL_HTTP_URL,
    PORT,
    POSITIVE_DURATION,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    REDIS_URL,
    SIZE,
    STR_LIST,
    STR_SET,
    STRING,
    key,
    of,
    one_of,
)
from proxy.core.principal import PrincipalType
from proxy.core.timeouts import ConnectionPolicy

DEFAULT_CONNECTIONS = ConnectionPolicy()

AuthMode = Literal["public", "optional", "required"]
AUTH_MODES = one_of(*get_args(AuthMode))
PRINCIPAL_TYPES: tuple[str, ...] = get_args(PrincipalType)
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int = field(metadata=key(kind=PORT))
    # listen only: plain requests skip aiohttp's server and client (frontdoor.py).
    fast_path: bool = True


@dataclass(frozen=True, slots=True)
class Upstream:
    url: str = field(metadata=key(kind=HTTP_URL))
    connect_timeout: float = 5.0
    # Above Socket.IO's pingInterval + pingTimeout (45 s) so long polls survive.
    read_timeout: float = 60.0
    # 0 means unlimited.
    max_body_size: int = of(SIZE, 10 * 1024 * 1024)
    # Path the admin /readyz probes; any HTTP answer (even 404) means "up".
    readiness_path: str = of(ABSOLUTE_PATH, "/")
    # Concurrent upstream connections; 0: unlimited. Every open WebSocket and every
    # pending Socket.IO long poll holds one, so a low cap queues live traffic.
    pool_size: int = 0


@dataclass(frozen=True, slots=True)
class Clerk:
    api_url: str = field(metadata=key(kind=ISSUER_URL, default="https://api.clerk.com"))
    secret_key: str = field(repr=False)
    machine_secret_key: str = field(default="", repr=False)
    # A human name for the Clerk instance this environment trusts (logged at start-up).
    instance: str = "default"
    # "production", "development", or "" when neither it nor `environment` says.
    instance_type: str = ""
    # Expected JWT `iss` (the instance's Frontend API URL); unchecked when empty.
    issuer: str = of(OPTIONAL_HTTP_URL, "")
    authorized_parties: tuple[str, ...] = ()
    timeout: float = 5.0
    jwks_cache_seconds: float = 3600.0
    # An unknown `kid` triggers a JWKS refetch at most this often.
    jwks_min_refetch_seconds: float = 30.0
    api_version: str = "2026-05-12"
    clock_skew_seconds: float = 5.0
    # A token the cache does not know waits at most this long for its verification, then
    # gets 503; the call goes on and fills the cache for the retry.
    miss_deadline: float = of(POSITIVE_DURATION, 1.0)
    # The pause after a failed verify call (5xx, timeout, no connection): doubled per
    # consecutive failure, jittered, capped; Clerk's Retry-After is a floor.
    backoff_initial: float = of(POSITIVE_DURATION, 0.1)
    backoff_max: float = of(POSITIVE_DURATION, 10.0)


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

    target: RedisTarget = field(metadata=key(yaml=False))  # from `url`
    url: str = field(metadata=key(kind=REDIS_URL))  # as configured, without credentials (logs)
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # Every Redis call is bounded by this; a few ms, so a slow Redis costs little.
    timeout: float = of(POSITIVE_DURATION, 0.01)
    connect_timeout: float = of(POSITIVE_DURATION, 0.5)
    breaker_failures: int = of(POSITIVE_INT, 5)
    breaker_seconds: float = of(POSITIVE_DURATION, 5.0)
    # How long a process waits for another one's verification of the same token.
    flight_wait: float = 1.0
    # The cost guard's buckets in Redis: the configured rates hold for the whole cluster.
    budget: bool = True
    # Revocations are re-read this often (and on every reconnect) in case one was missed.
    resync_seconds: float = of(POSITIVE_DURATION, 5.0)
    key_prefix: str = "clerk-auth-proxy"


@dataclass(frozen=True, slots=True)
class MachineRule:
    """One way an issuer marks a client-credentials token; any rule that matches does."""

    # `sub` equals this, with `{client_id}` replaced
    sub: str | None = of(STRING, None)
    # this claim is present (and equals `value`, when given)
    claim: str | None = of(STRING, None)
    value: str | None = of(STRING, None)


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """How an issuer's verified claims become a Principal (docs/configuration.md)."""

    client_id: tuple[str, ...] = ("client_id",)  # first present claim names the client
    machine: tuple[MachineRule, ...] = field(  # RFC 9068 §2.2
        default=(MachineRule(sub="{client_id}"),), metadata=key(section=MachineRule, many="list")
    )
    scopes: tuple[str, ...] = ("scope",)  # first present; a string is space-separated
    forward: tuple[str, ...] = ()  # claims passed on in X-Auth-Claims
    # (claim, value) pairs that must hold, written as a mapping
    require: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=key(schema={"type": ["object", "null"], "additionalProperties": STRING.schema}),
    )


@dataclass(frozen=True, slots=True)
class Introspection:
    """RFC 7662 introspection of this issuer's opaque tokens."""

    client_id: str = field(metadata=key(kind=STRING))
    client_secret: str = field(repr=False)
    # empty: the discovery document's introspection_endpoint
    endpoint: str = of(ISSUER_URL, "")
    auth_method: str = of(
        one_of("client_secret_basic", "client_secret_post"), "client_secret_basic"
    )
    token_prefix: str = ""  # which opaque tokens are this issuer's; empty: every other one


@dataclass(frozen=True, slots=True)
class Issuer:
    """An OAuth 2.0 issuer beside Clerk whose access tokens this API accepts."""

    name: str = field(metadata=key(kind=STRING))
    issuer: str = field(metadata=key(kind=EXACT_URL))  # compared exactly with a token's `iss`
    audiences: tuple[str, ...] = field(metadata=key(kind=STR_LIST, default=()))
    preset: str = "rfc9068"
    jwks_url: str = of(EXACT_URL, "")  # empty: from discovery
    algorithms: tuple[str, ...] = ("RS256",)
    token_types: tuple[str, ...] = ("at+jwt",)  # header `typ`; "" accepts a token without one
    leeway_seconds: float = 5.0
    claims: ClaimMapping = ClaimMapping()
    jwks_cache_seconds: float = 3600.0
    jwks_min_refetch_seconds: float = 30.0
    timeout: float = 5.0
    introspection: Introspection | None = field(
        default=None, metadata=key(section=Introspection, when="present")
    )


@dataclass(frozen=True, slots=True)
class Cache:
    ttl_seconds: float = 60.0
    negative_ttl_seconds: float = 10.0
    max_entries: int = of(POSITIVE_INT, 100_000)
    # The stale window: past its fresh period an entry is served at once while one
    # background check runs, and while checks fail. 0 turns it off.
    stale_if_error_seconds: float = 0.0
    # The second level in Redis/Valkey; None: this process's cache only.
    shared: SharedCache | None = field(
        default=None, metadata=key(section=SharedCache, when="present")
    )
    # The last this fraction of a fresh period is where a request starts a background
    # re-verification (at a point jittered per token); 0 turns refresh ahead off.
    refresh_ahead: float = of(FRACTION, 0.2)


@dataclass(frozen=True, slots=True)
class Bucket:
    rate: float = field(metadata=key(kind=POSITIVE_NUMBER))  # tokens per second
    burst: int = field(metadata=key(kind=POSITIVE_INT))


DEFAULT_GLOBAL_BUCKET = Bucket(rate=50.0, burst=200)
DEFAULT_PER_IP_BUCKET = Bucket(rate=5.0, burst=20)


@dataclass(frozen=True, slots=True)
class VerificationBudget:
    enabled: bool = True
    global_: Bucket = field(default=DEFAULT_GLOBAL_BUCKET, metadata=key(name="global"))
    per_ip: Bucket = DEFAULT_PER_IP_BUCKET
    # Unknown tokens are charged to their source: the client address masked to these.
    ipv4_prefix: int = of(IPV4_PREFIX, 32, under="per_ip")
    ipv6_prefix: int = of(IPV6_PREFIX, 64, under="per_ip")
    # The share of the global burst only re-verifications of known-valid tokens may use.
    reserved_for_known: float = of(FRACTION, 0.25)


@dataclass(frozen=True, slots=True)
class IssuerRule:
    """What a route asks of the principals of one issuer (routes[].issuers.<name>)."""

    scopes: tuple[str, ...] = ()
    # allowed principal ids (client ids of machines)
    clients: frozenset[str] | None = of(STR_SET, None)
    principal_types: frozenset[str] | None = of(STR_SET, None)


@dataclass(frozen=True, slots=True)
class Route:
    name: str = field(metadata=key(kind=STRING, default=""))  # "": the path
    path: str = field(metadata=key(kind=STRING))
    # None: any method
    methods: frozenset[str] | None = of(STR_SET, None)
    auth: AuthMode = field(default="required", metadata=key(kind=AUTH_MODES))
    scopes: tuple[str, ...] = ()
    # None: any authenticated type
    principal_types: frozenset[str] | None = of(STR_SET, None)
    # Allow-lists of what Clerk itself asserts: machine ids (`mch_…`, the `sub` Clerk sets
    # on M2M tokens) and OAuth application client ids. None: not restricted.
    machines: frozenset[str] | None = of(STR_SET, None)
    oauth_clients: frozenset[str] | None = of(STR_SET, None)
    # None: every issuer, and the rules above are Clerk's only. Else the issuers accepted,
    # each with its own rules; "clerk" names Clerk (whose rules are the ones above).
    issuers: tuple[tuple[str, IssuerRule], ...] | None = field(
        default=None, metadata=key(section=IssuerRule, many="names")
    )


@dataclass(frozen=True, slots=True)
class Headers:
    prefix: str = "X-Auth-"
    # Honoured when a client sends it, made when it does not; "" leaves requests unnamed.
    request_id: str = "X-Request-Id"


@dataclass(frozen=True, slots=True)
class WebSocket:
    max_message_size: int = of(SIZE, 1024 * 1024)
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
    level: str = of(one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True), "INFO")
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class Revocation:
    """`revocation`: POST /revoke on its own listener (off without a secret)."""

    secret: str = field(default="", repr=False)
    # How long a revoked id stays refused when its expiry is not known.
    default_ttl_seconds: float = of(POSITIVE_DURATION, 86_400.0)
    # The control listener: loopback by default, never the scrape port (an operator
    # reaches it with `kubectl exec … clerk-auth-proxy revoke`).
    listen: Listen = field(
        default=Listen("127.0.0.1", 9091, fast_path=False), metadata=key(skip=("fast_path",))
    )


@dataclass(frozen=True, slots=True)
class Config:
    source: str = field(metadata=key(yaml=False))  # the file it was read from
    upstream: Upstream = field(metadata=key(section=Upstream))
    clerk: Clerk = field(metadata=key(section=Clerk))
    environment: str = "local"
    listen: Listen = Listen("0.0.0.0", 8080)
    admin: Listen = field(
        default=Listen("0.0.0.0", 9090, fast_path=False), metadata=key(skip=("fast_path",))
    )
    cache: Cache = Cache()
    verification_budget: VerificationBudget = VerificationBudget()
    routes: tuple[Route, ...] = field(default=(), metadata=key(section=Route, many="list"))
    default_route: Route = field(
        default=Route(name="default", path="/**"), metadata=key(skip=("path",))
    )
    forward_authorization: bool = False
    headers: Headers = Headers()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    websocket: WebSocket = WebSocket()
    shutdown: Shutdown = Shutdown()
    logging: Logging = Logging()
    workers: int = of(POSITIVE_INT, 1)
    revocation: Revocation = Revocation()
    issuers: tuple[Issuer, ...] = field(default=(), metadata=key(section=Issuer, many="list"))
    connections: ConnectionPolicy = field(
        default=DEFAULT_CONNECTIONS, metadata=key(kinds={"min_body_rate": SIZE})
    )
    # The forward-auth listener (request.forward_auth): ingresses ask it to judge a
    # request they describe. None: off.
    forward_auth: Listen | None = field(
        default=None,
        metadata=key(
            section=Listen,
            when="enabled",
            default=Listen("0.0.0.0", 8081, fast_path=False),
            skip=("fast_path",),
        ),
    )
    # Secrets written in the file itself: only for a development instance (clerk_keys).
    allow_inline_secrets: bool = False
    # Not part of what the config says (two files saying the same compare equal):
    # key path -> the environment variables its value was read from, so a message can
    # name the one to change; what is valid but probably wrong, as (key, why).
    variables: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, compare=False, repr=False, metadata=key(yaml=False)
    )
    warnings: tuple[tuple[str, str], ...] = field(
        default=(), compare=False, metadata=key(yaml=False)
    )
    # The files it was read from (the config file, secret files), to notice a change.
    inputs: tuple[str, ...] = field(default=(), compare=False, metadata=key(yaml=False))
