"""The request head the fast path sends upstream, remembered per client connection.

It is the client's head rewritten (`headers.UpstreamRewrite.block`: dropped fields cut,
the principal's and the forwarding fields appended) under the upstream's request line.
A keep-alive partner polling one URL repeats its request: `http1.HeadParser` then hands
back the same `RequestHead` object, and when the principal, hop, route and config are
the same objects too, so is the head that goes up — built once, sent every time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core.principal import Principal
from proxy.http import http1
from proxy.http.headers import ClientHop
from proxy.request.policy import Resolved

if TYPE_CHECKING:
    from proxy.request.runtime import Runtime


class UpstreamHeads:
    __slots__ = ("_head", "_hop", "_principal", "_resolved", "_rt", "_sent")

    def __init__(self) -> None:
        self._head: http1.RequestHead | None = None
        self._principal: Principal | None = None
        self._hop: ClientHop | None = None
        self._resolved: Resolved | None = None
        self._rt: Runtime | None = None
        self._sent = b""

    def build(
        self,
        rt: Runtime,
        head: http1.RequestHead,
        principal: Principal,
        hop: ClientHop,
        resolved: Resolved,
    ) -> bytes:
        # Identity, not equality: every input is immutable, so the same objects give the
        # same bytes, and the check costs a few pointer compares.
        if (
            head is self._head
            and principal is self._principal
            and hop is self._hop
            and resolved is self._resolved
            and rt is self._rt
        ):
            return self._sent
        block = rt.rewrite.block(
            head.block,
            principal=principal,
            hop=hop,
            connection=head.connection,
        )
        target = rt.fast_prefix + resolved.path
        if resolved.query is not None:
            target += "?" + resolved.query
        sent = b"".join(
            (f"{head.method} {target} HTTP/1.1".encode("latin-1"), block, http1.HEAD_END)
        )
        self._head, self._principal, self._hop = head, principal, hop
        self._resolved, self._rt = resolved, rt
        self._sent = sent
        return sent
