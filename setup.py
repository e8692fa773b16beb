"""The request path's modules are compiled with mypyc into C extensions (a third fewer
instructions per proxied request, measured with callgrind: docs/performance.md); every
other module, and every module on a machine that cannot compile, stays pure Python.

CLERK_AUTH_PROXY_PURE=1 builds pure Python only; CLERK_AUTH_PROXY_REQUIRE_COMPILED=1 makes a
failed compilation fail the build. `proxy.compiled()` tells which one runs.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# The modules every fast-path request runs through, the config's types it reads on every
# request (config_model: compiled, a field read is direct instead of an attribute lookup),
# and the cache's storage a cache hit on a new connection reads (entries, ids,
# generations). Left out: modules tests patch at
# run time (cache), the async generator cleanup_ctx needs (lifetime), and everything off
# the per-request path.
COMPILED = [
    "proxy/request/app.py",
    "proxy/request/routed.py",
    "proxy/request/runtime.py",
    "proxy/fastpath/frontdoor.py",
    "proxy/fastpath/fields.py",
    # Each connection's clock and the listener's bookkeeping: three clock calls a request.
    "proxy/core/timeouts.py",
    "proxy/fastpath/doorway.py",
    "proxy/http/upstream.py",
    "proxy/fastpath/upstream_head.py",
    "proxy/http/http1.py",
    "proxy/http/headers.py",
    "proxy/core/principal.py",
    "proxy/request/policy.py",
    "proxy/auth/tokens.py",
    "proxy/auth/verifier.py",
    # A fresh JWT's own reading and judging, around the signature check (issue 27 point 6).
    "proxy/auth/jws.py",
    "proxy/auth/claims_json.py",
    "proxy/auth/clerk/classes.py",
    "proxy/auth/issuers/claims.py",
    "proxy/observe/loop_metrics.py",
    "proxy/observe/metrics.py",
    "proxy/observe/logs.py",
    "proxy/observe/correlation.py",
    "proxy/auth/cache/entries.py",
    "proxy/auth/cache/ids.py",
    "proxy/auth/cache/generations.py",
    "proxy/config/model.py",
    # A socket's life after its 101 (the byte relay scans every frame head) and the
    # per-socket work of a reconnect wave (handshakes, the CONNECT rewrite, its grants).
    "proxy/realtime/splice.py",
    "proxy/realtime/handshake.py",
    "proxy/realtime/namespaces.py",
    "proxy/realtime/relays.py",
    "proxy/realtime/socketio.py",
    "proxy/realtime/websocket.py",
]


def extensions() -> list[object]:
    # The group's shared library is `proxy/_native__mypyc*.so`, inside the package: a
    # top-level one (group "proxy") is found only from the source tree's own directory,
    # so an editable install ran only when started from there.
    if os.environ.get("CLERK_AUTH_PROXY_PURE") == "1":
        return []
    # The Dockerfile's build stage sets this: an image whose request path fell back to
    # pure Python would run at about twice the CPU, and say so only in a log line.
    required = os.environ.get("CLERK_AUTH_PROXY_REQUIRE_COMPILED") == "1"
    try:
        from mypyc.build import mypycify

        modules = mypycify(COMPILED, opt_level="3", group_name="proxy._native")
    except (ImportError, SystemExit, Exception) as exc:  # no mypyc, or it refused
        if required:
            raise SystemExit(
                f"clerk-auth-proxy: CLERK_AUTH_PROXY_REQUIRE_COMPILED=1, and mypyc failed ({exc!r})"
            ) from exc
        print(f"clerk-auth-proxy: building pure Python ({exc!r})", file=sys.stderr)
        return []
    for module in modules:
        # No compiler: pure Python, not a failed install (unless compiled is required).
        module.optional = not required
    return modules


# setuptools runs this file as __main__; the tests import it to call `extensions`.
if __name__ == "__main__":
    setup(ext_modules=extensions())
