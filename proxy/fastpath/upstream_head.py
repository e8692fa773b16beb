"""The request head the fast path sends upstream: the client's head rewritten
(`headers.UpstreamRewrite.block`: dropped fields cut, the principal's and the forwarding
fields appended) under the upstream's request line.

Built afresh for every request: a partner's client names each request (`X-Request-Id`,
`traceparent`), and when it does not the proxy does, so no two heads on a connection
are the same bytes; a per-connection memo of the last head paid only on identical heads
(docs/performance.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core.principal import Principal
from proxy.http import http1
from proxy.http.headers import ClientHop
from proxy.request.policy import Resolved

if TYPE_CHECKING:
    from proxy.request.runtime import Runtime


def upstream_head(
    rt: Runtime,
    head: http1.RequestHead,
    principal: Principal,
    hop: ClientHop,
    resolved: Resolved,
) -> bytes:
    block = rt.rewrite.block(head, principal=principal, hop=hop)
    target = rt.fast_prefix + resolved.path
    if resolved.query is not None:
        target += "?" + resolved.query
    return b"".join((f"{head.method} {target} HTTP/1.1".encode("latin-1"), block, http1.HEAD_END))
