"""Forward-auth mode: the listener an ingress asks (`forward_auth:`), as nginx's
`auth_request`, ingress-nginx's `auth-url` or Traefik's ForwardAuth do, instead of the
proxy sitting in the data path.

The asking proxy describes the request it holds — method and target in the fields below,
the token in `Authorization` — and this judges it by the same steps as `Proxy.handle`:
normalize and route (`Proxy.route`), authenticate (cache first), authorize; then answers
200 with exactly the principal's fields as the upstream would get them
(`PrincipalHeaders.render`), or the proxy's own refusal. Nothing is forwarded, so the
Socket.IO rewriting (`auth.token` in CONNECT packets) does not apply: only the handshake
request's `Authorization` is judged.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from proxy.core import errors
from proxy.core.errors import ProxyError
from proxy.core.principal import ANONYMOUS, Principal
from proxy.core.timeouts import clock_of
from proxy.http.conformance import check_request
from proxy.http.headers import ClientHop
from proxy.request.app import Proxy, gone_status, refused
from proxy.request.routed import AiohttpFields, HeadFields

# Where each asking proxy writes the request it asks about: (target fields, method field).
DESCRIPTIONS: Final = (
    # nginx auth_request (as docs/deploy.md sets it) the target; ingress-nginx auth-url the
    # whole URL (`$scheme://$http_host$request_uri`), and the target too under `auth-method`.
    (("X-Original-URI", "X-Original-URL"), "X-Original-Method"),
    (("X-Forwarded-Uri",), "X-Forwarded-Method"),  # Traefik ForwardAuth
)
_URL_FIELD: Final = "X-Original-URL"
# A refusal's JSON body again as a field: nginx's auth_request keeps the subrequest's
# fields (auth_request_set) but drops its body and passes only 401 and 403 on, so the
# example config (docs/deploy.md) rebuilds the answer from this and the status.
REFUSAL_FIELD: Final = "X-Forward-Auth-Refusal"
_METHOD: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
# nginx refuses a Host with `/` in it, so the first `/` after `//` starts the target.
_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/]*(/.*)")


def _bad(message: str) -> ProxyError:
    return ProxyError(errors.BAD_REQUEST, message)


def _target(field: str, value: str) -> str:
    if field != _URL_FIELD:
        return value
    url = _URL.fullmatch(value)
    if url is None:
        raise _bad(f"{_URL_FIELD} must be an absolute URL")
    return url.group(1)


def described(fields: HeadFields) -> tuple[str, str]:
    """The method and request target the asking proxy describes. One description, each
    field once: asking proxies pass the client's own fields along, so a client could add a
    second description (a Traefik client an `X-Original-URI`) naming a route that lets
    more through; two are refused, never chosen between. ingress-nginx's URL and target
    fields are one description when they name the same target."""
    found: list[tuple[set[str], str]] = []
    for target_fields, method_field in DESCRIPTIONS:
        targets: set[str] = set()
        for field in target_fields:
            values = fields.getall(field)
            if len(values) > 1:
                raise _bad(f"a forward-auth request has {field} twice")
            if values:
                targets.add(_target(field, values[0]))
        if targets:
            found.append((targets, method_field))
    if len(found) != 1 or len(found[0][0]) != 1:
        names = ", ".join(f for targets, _ in DESCRIPTIONS for f in targets)
        raise _bad(f"a forward-auth request describes one request, in {names}")
    (target,), method_field = found[0]
    methods = fields.getall(method_field)
    if len(methods) != 1 or not _METHOD.fullmatch(methods[0]):
        raise _bad(f"a forward-auth request needs one {method_field}")
    return methods[0], target


class ForwardAuth:
    """The forward-auth listener's one handler, on the process's `Proxy`."""

    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy

    async def judge(self, request: web.Request) -> web.StreamResponse:
        proxy = self._proxy
        rt = proxy.runtime
        started = time.perf_counter()
        method, route_name, status = request.method, "unmatched", 500
        principal: Principal = ANONYMOUS
        why: ProxyError | None = None
        # The asking proxy's request id (ingress-nginx sends its $req_id): logged, never
        # made here — the ingress names its requests.
        request_id = request.headers.get(rt.correlation.name) if rt.correlation.enabled else None
        traceparent = request.headers.get("traceparent")
        # The connection's clock, as in `Proxy.handle`: an asking proxy keeps its
        # connections open, and between questions one is idle, not a head arriving.
        clock = clock_of(request.transport)
        if clock is not None:
            clock.head_done(time.monotonic())
        try:
            check_request(request)
            fields = AiohttpFields(request)
            method, target = described(fields)
            hop = ClientHop(request.remote or "", request.scheme, request.host)
            routed = proxy.route(rt, method, target, fields, hop)
            route_name = routed.route.name
            authenticated = proxy.authenticate_cached(rt, routed)
            if authenticated is None:
                authenticated = await proxy.authenticate(rt, routed)
            principal, why = authenticated
            principal = proxy.authorize(rt, routed, authenticated)
            status = 200
            return proxy.last_if_draining(
                web.Response(status=200, headers=CIMultiDict(rt.names.render(principal)))
            )
        except ProxyError as refusal:
            why = refusal
            status = refusal.status
            response = refused(refusal)
            response.headers[REFUSAL_FIELD] = refusal.body().decode("ascii")
            return proxy.last_if_draining(response)
        except asyncio.CancelledError:
            status = gone_status(clock)
            raise
        finally:
            if clock is not None:
                clock.answered(time.monotonic())
            proxy.finished(
                rt,
                route_name,
                method,
                status,
                started,
                principal,
                request.remote,
                why,
                request_id,
                traceparent,
            )


def create_forward_auth_app(proxy: Proxy) -> web.Application:
    """The forward-auth listener's app: every path and method is a question (the path the
    asking proxy uses is its own business; the request asked about is in the fields)."""
    app = web.Application(handler_args={"max_field_size": 16 * 1024})
    app.router.add_route("*", "/{tail:.*}", ForwardAuth(proxy).judge)
    return app
