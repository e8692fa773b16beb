"""What ships: the request path compiled by mypyc (setup.py), unless asked otherwise."""

from __future__ import annotations

import os

import pytest

import proxy
from proxy import frontdoor, headers, http1


def test_the_request_path_runs_compiled() -> None:
    if os.environ.get("CLERK_AUTH_PROXY_PURE") == "1":
        pytest.skip("CLERK_AUTH_PROXY_PURE=1: a pure-Python build was asked for")
    assert proxy.compiled(), "setup.py built no extensions (no compiler, or mypyc refused)"
    for module in (frontdoor, headers, http1):
        assert module.__file__ is not None and module.__file__.endswith(".so"), module.__name__
