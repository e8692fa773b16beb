"""What a request must be, beyond what aiohttp's parser checks, before either door routes
it: the refusals nginx makes that aiohttp does not. The fast path hands every such request
to aiohttp's door (`http1.HeadParser`), so the answers come from here alone."""

from __future__ import annotations

from aiohttp import HttpVersion11, web

from proxy.core import errors
from proxy.core.errors import ProxyError


def check_request(request: web.Request) -> None:
    """Raises 505 for a major version other than 1 (aiohttp reads `HTTP/2.0` or
    `HTTP/0.9` request lines and would answer in them, and refuses to chunk for them),
    and 400 for an HTTP/1.1 request without exactly one Host (RFC 9112 §3.2; aiohttp
    refuses two but accepts none)."""
    version = request.version
    if version.major != 1:
        # The refusal is answered in HTTP/1.1, as nginx does: aiohttp answers in the
        # request's version, which no HTTP/1 client reads.
        request._version = HttpVersion11
        request._cache.pop("version", None)  # reified
        raise ProxyError(
            errors.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and HTTP/1.1 are served here"
        )
    if version.minor >= 1 and len(request.headers.getall("Host", ())) != 1:
        raise ProxyError(errors.BAD_REQUEST, "an HTTP/1.1 request needs exactly one Host field")
