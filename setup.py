"""The request path's modules are compiled with mypyc into C extensions (a third fewer
instructions per proxied request, measured with callgrind: docs/performance.md); every
other module, and every module on a machine that cannot compile, stays pure Python.

CLERK_AUTH_PROXY_PURE=1 builds pure Python only. `proxy.COMPILED` tells which one runs.
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
    "proxy/app.py",
    "proxy/frontdoor.py",
    "proxy/upstream.py",
    "proxy/upstream_head.py",
    "proxy/http1.py",
    "proxy/headers.py",
    "proxy/principal.py",
    "proxy/policy.py",
    "proxy/tokens.py",
    "proxy/verifier.py",
    "proxy/loop_metrics.py",
    "proxy/metrics.py",
    "proxy/logs.py",
    "proxy/entries.py",
    "proxy/ids.py",
    "proxy/generations.py",
    "proxy/config_model.py",
]


def extensions() -> list[object]:
    # The group's shared library is `proxy/_native__mypyc*.so`, inside the package: a
    # top-level one (group "proxy") is found only from the source tree's own directory,
    # so an editable install ran only when started from there.
    if os.environ.get("CLERK_AUTH_PROXY_PURE") == "1":
        return []
    try:
        from mypyc.build import mypycify

        modules = mypycify(COMPILED, opt_level="3", group_name="proxy._native")
    except (ImportError, SystemExit, Exception) as exc:  # no mypyc, or it refused
        print(f"clerk-auth-proxy: building pure Python ({exc!r})", file=sys.stderr)
        return []
    for module in modules:
        module.optional = True  # no compiler: pure Python, not a failed install
    return modules


setup(ext_modules=extensions())
