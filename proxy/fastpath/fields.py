"""`request.routed.HeadFields` for the fast path: what `Proxy.route` reads of a head the
fast path parsed, with the bearer token remembered for the connection (one per
connection, so a keep-alive client repeating its Authorization field extracts it once)."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.auth import tokens
from proxy.http import http1


class HeadFieldsMemo:
    """The fields of the connection's current head (`head`, set per request)."""

    __slots__ = ("_last_authorization", "_last_token", "head")

    def __init__(self) -> None:
        self.head: http1.RequestHead | None = None
        self._last_authorization: Sequence[str] = ()
        self._last_token: str | None = None

    def bearer(self, authorization: Sequence[str]) -> str | None:
        """`tokens.extract_bearer`, remembered for the connection's last header (pure in
        its values; refusals are not remembered, they raise each time)."""
        if authorization and authorization == self._last_authorization:
            return self._last_token
        token = tokens.extract_bearer(authorization)
        self._last_authorization, self._last_token = authorization, token
        return token

    def getall(self, name: str) -> Sequence[str]:
        head = self.head
        assert head is not None
        if name == "Authorization":
            return head.authorization
        return http1.field_values(head.block, http1.values_pattern(name))
