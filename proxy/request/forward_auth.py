"""Forward-auth mode: the listener an ingress asks (`forward_auth:`), as nginx's
`auth_request`, ingress-nginx's `auth-url`, Traefik's ForwardAuth or Envoy's (and Istio's)
`ext_authz` HTTP service do, instead of the proxy sitting in the data path.

The asking proxy describes the request it holds — method and target in the fields below,
or, for Envoy, in the question's own request line under `ENVOY_PREFIX` — with the token in
`Authorization`, and this judges it by the same steps as `Proxy.handle`:
normalize and route (`Proxy.route`), authenticate (cache first), authorize; then answers
200 with exactly the principal's fields as the upstream would get them
(`PrincipalHeaders.render`), or the proxy's own refusal. Nothing is forwarded, so the
Socket.IO rewriting (`auth.token` in CONNECT packets) does not apply: only the handshake
request's `Authorization` is judged.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from proxy.core.errors import ProxyError, bad_request
from proxy.http.headers import ClientHop, PrincipalHeaders
from proxy.observe.correlation import traceparent_field
from proxy.request.app import Exchange, Proxy, check_request
from proxy.request.routed import AiohttpFields, HeadFields

# Where each asking proxy writes the request it asks about: (target fields, method field).
DESCRIPTIONS: Final = (
    # nginx auth_request (as docs/deploy.md sets it) the target; ingress-nginx auth-url the
    # whole URL (`$scheme://$http_host$request_uri`), and the target too under `auth-method`.
    (("X-Original-URI", "X-Original-URL"), "X-Original-Method"),
    (("X-Forwarded-Uri",), "X-Forwarded-Method"),  # Traefik ForwardAuth
)
_URL_FIELD: Final = "X-Original-URL"
# Envoy's ext_authz HTTP service has no description fields: it asks with the request's own
# method and its path (query included) behind the configured `path_prefix`, which must be
# this. See `envoy_described`.
ENVOY_PREFIX: Final = "/ext_authz"
# Envoy removes the fields an OK answer names here from the request before the upstream
# gets it (its `allowed_upstream_headers` only sets fields, so a client's copy of a field
# the principal lacks would otherwise pass).
ENVOY_REMOVE_FIELD: Final = "x-envoy-auth-headers-to-remove"
# A refusal's JSON body again as a field: nginx's auth_request keeps the subrequest's
# fields (auth_request_set) but drops its body and passes only 401 and 403 on, so the
# example config (docs/deploy.md) rebuilds the answer from this and the status.
REFUSAL_FIELD: Final = "X-Forward-Auth-Refusal"
_METHOD: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
# nginx refuses a Host with `/` in it, so the first `/` after `//` starts the target.
_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/]*(/.*)")


def _target(field: str, value: str) -> str:
    if field != _URL_FIELD:
        return value
    url = _URL.fullmatch(value)
    if url is None:
        raise bad_request(f"{_URL_FIELD} must be an absolute URL")
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
                raise bad_request(f"a forward-auth request has {field} twice")
            if values:
                targets.add(_target(field, values[0]))
        if targets:
            found.append((targets, method_field))
    if len(found) != 1 or len(found[0][0]) != 1:
        names = ", ".join(f for targets, _ in DESCRIPTIONS for f in targets)
        raise bad_request(f"a forward-auth request describes one request, in {names}")
    (target,), method_field = found[0]
    methods = fields.getall(method_field)
    if len(methods) != 1 or not _METHOD.fullmatch(methods[0]):
        raise bad_request(f"a forward-auth request needs one {method_field}")
    return methods[0], target


def envoy_described(method: str, raw_path: str) -> tuple[str, str] | None:
    """The method and target of an Envoy question (None: not one): its own request line,
    the path with `ENVOY_PREFIX` taken off.

    Only under the prefix, and then only the request line. Envoy writes that line itself
    from the client's request — the client cannot make it name another request than the
    one Envoy forwards — while any field may be the client's: Envoy passes on whatever its
    `allowed_headers` match (an `x-` prefix pattern passes them all), and an ingress-nginx
    in front sets `X-Original-URI` on every request it proxies. So under the prefix the
    description fields are never read (neither judged nor refused: a legitimate chain may
    carry them). Taking the request line as the description wherever no fields are present
    instead would let a client who adds fields choose the route judged, and would judge a
    misconfigured nginx's subrequest (`GET /_auth`) as if it were the request: only a
    prefix the operator configured in Envoy says the line is a description. Without it an
    Envoy question has no description and is refused (400), never judged on its own path."""
    if not raw_path.startswith(ENVOY_PREFIX + "/"):
        return None
    return method, raw_path[len(ENVOY_PREFIX) :]


def envoy_removals(names: PrincipalHeaders, rendered: Iterable[str], drop_token: bool) -> str:
    """`ENVOY_REMOVE_FIELD`'s value: the principal's fields it does not have (a client's
    copy must not reach the upstream), and `Authorization` unless forwarded."""
    present = {name.lower() for name in rendered}
    removed = [name.lower() for name, _, _ in names.fields if name.lower() not in present]
    if drop_token:
        removed.append("authorization")
    return ", ".join(removed)


class ForwardAuth:
    """The forward-auth listener's one handler, on the process's `Proxy`."""

    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy

    async def judge(self, request: web.Request) -> web.StreamResponse:
        proxy = self._proxy
        rt = proxy.runtime
        envoy = envoy_described(request.method, request.raw_path)
        # The asking proxy's request id (ingress-nginx sends its $req_id): logged, never
        # made here — the ingress names its requests.
        request_id = request.headers.get(rt.correlation.name) if rt.correlation.enabled else None
        ex = Exchange(request, request_id, traceparent_field(request.headers.get("traceparent")))
        try:
            check_request(request)
            fields = AiohttpFields(request)
            ex.method, target = envoy if envoy is not None else described(fields)
            hop = ClientHop(request.remote or "", request.scheme, request.host)
            routed = proxy.route(rt, ex.method, target, fields, hop)
            ex.route_name = routed.route.name
            authenticated = proxy.authenticate_cached(rt, routed)
            if authenticated is None:
                authenticated = await proxy.authenticate(rt, routed)
            ex.principal, ex.why = authenticated
            ex.principal = principal = proxy.authorize(rt, routed, authenticated)
            ex.status = 200
            answer = CIMultiDict(rt.names.render(principal))
            if envoy is not None:
                drop_token = not rt.config.forward_authorization
                answer[ENVOY_REMOVE_FIELD] = envoy_removals(rt.names, answer, drop_token)
            return proxy.last_if_draining(web.Response(status=200, headers=answer))
        except ProxyError as refusal:
            response = ex.refuse(refusal)
            if envoy is None:  # Envoy passes a denial's body on itself
                response.headers[REFUSAL_FIELD] = refusal.body().decode("ascii")
            return proxy.last_if_draining(response)
        except asyncio.CancelledError:
            ex.gone()
            raise
        finally:
            ex.end(proxy, rt)


def create_forward_auth_app(proxy: Proxy) -> web.Application:
    """The forward-auth listener's app: every path and method is a question (the path the
    asking proxy uses is its own business; the request asked about is in the fields)."""
    app = web.Application(handler_args={"max_field_size": 16 * 1024})
    app.router.add_route("*", "/{tail:.*}", ForwardAuth(proxy).judge)
    return app
