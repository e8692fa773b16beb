"""`Runtime`: everything the request path derives from one validated `Config`.

`Proxy` (app) holds one and a config reload swaps it whole, so a request never sees
half of an old config and half of a new one. Building one does no I/O: the verifier is
made (and started) by the caller, and kept across reloads that leave verification as
it was (`same_verification`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

from proxy.config.load import Config
from proxy.core.principal import Verifier
from proxy.http.forward import UpstreamTarget
from proxy.http.headers import PrincipalHeaders, UpstreamRewrite
from proxy.observe.correlation import Correlation
from proxy.request.policy import Policy

# Access lines are INFO: a config at WARNING or above asks for none.
ACCESS_LEVELS: Final = frozenset({"DEBUG", "INFO"})


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything derived from one validated Config."""

    config: Config
    policy: Policy
    verifier: Verifier
    names: PrincipalHeaders
    # The upstream rewrite under this config, for both doors: `items` on (name, value)
    # pairs (aiohttp's), `block` on a raw field block (the fast path's).
    rewrite: UpstreamRewrite
    target: UpstreamTarget
    timeout: aiohttp.ClientTimeout
    # The upstream URL's own path, prepended on the fast path.
    fast_prefix: str
    # Whether requests are written to the access log (decided once, read every request).
    access_log: bool
    # The request-id field (`headers.request_id`); the fast path's one pass over a head
    # that finds it is the rewrite's (`rewrite.picked`).
    correlation: Correlation


def build_runtime(config: Config, verifier: Verifier) -> Runtime:
    up = config.upstream
    names = PrincipalHeaders.for_prefix(config.headers.prefix)
    rewrite = UpstreamRewrite(
        names,
        trusted=config.trusted_proxies,
        forward_authorization=config.forward_authorization,
        request_id=config.headers.request_id,
    )
    return Runtime(
        config=config,
        policy=Policy(config.routes, config.default_route),
        verifier=verifier,
        names=names,
        rewrite=rewrite,
        target=UpstreamTarget(URL(up.url)),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=up.connect_timeout, sock_read=up.read_timeout
        ),
        fast_prefix=URL(up.url).raw_path.rstrip("/"),
        access_log=config.logging.access_log and config.logging.level in ACCESS_LEVELS,
        correlation=Correlation(config.headers.request_id),
    )


def same_verification(a: Config, b: Config) -> bool:
    """Whether a reload from `a` to `b` may keep the verifier (and its cache)."""
    return (a.clerk, a.cache, a.verification_budget, a.issuers) == (
        b.clerk,
        b.cache,
        b.verification_budget,
        b.issuers,
    )
