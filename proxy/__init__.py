"""clerk-auth-proxy: an authenticating reverse proxy for APIs behind Clerk."""

from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec

__version__ = "0.1.0"


def compiled() -> bool:
    """Whether the request path runs as mypyc-compiled C (setup.py) or as pure Python."""
    spec = find_spec("proxy.fastpath.frontdoor")
    origin = spec.origin if spec is not None else None
    return origin is not None and origin.endswith(tuple(EXTENSION_SUFFIXES))
