"""What the request path knows of a request once it is routed (`Routed`), the header
fields `Proxy.route` reads (`HeadFields`, implemented by each door), and the outcome of
authentication (`Authenticated`). Compiled: made per request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from aiohttp import web

from proxy.auth import tokens
from proxy.config.load import Route
from proxy.core.errors import ProxyError
from proxy.core.principal import Principal
from proxy.request.policy import Resolved


class Routed:
    """The request once its route, client IP and token are known. Immutable (`Final`).
    Made per request: a compiled plain class costs a tenth of a NamedTuple."""

    __slots__ = ("ip", "resolved", "route", "token")

    def __init__(self, resolved: Resolved, route: Route, token: str | None, ip: str) -> None:
        self.resolved: Final = resolved
        self.route: Final = route
        self.token: Final = token  # None on public routes: they never look at tokens
        self.ip: Final = ip


class HeadFields(Protocol):
    """A request's header fields as `Proxy.route` reads them (only those it needs, only
    when it needs them)."""

    def getall(self, name: str) -> Sequence[str]:
        """Every value of the field `name` (case-insensitive), in order."""
        ...

    def bearer(self, authorization: Sequence[str]) -> str | None:
        """`tokens.extract_bearer` of these Authorization values (the fast path
        remembers it per connection)."""
        ...


class AiohttpFields:
    """`HeadFields` of a request aiohttp parsed."""

    __slots__ = ("_request",)

    def __init__(self, request: web.Request) -> None:
        self._request = request

    def getall(self, name: str) -> Sequence[str]:
        return self._request.headers.getall(name, ())

    def bearer(self, authorization: Sequence[str]) -> str | None:
        return tokens.extract_bearer(authorization)


# The principal, and on an optional route the refusal that made it anonymous.
Authenticated = tuple[Principal, ProxyError | None]
