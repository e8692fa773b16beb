"""A Clerk Backend API emulator for the demo, our tests and users' own tests: M2M tokens,
OAuth access tokens, API keys, JWKS and session JWTs, with switchable faults.

- `app`: the aiohttp application and `ClerkEmulator` (start/stop it in a test);
- `state`: tokens, machines and keys in memory;
- `wire`: Clerk's JSON shapes and error bodies;
- `control`, `serving`: what both emulators share: call counts, faults and their control
  routes; serving on a socket;
- `issuer_app` / `issuer_state`: another OAuth 2.0 issuer (Authgear's client-credentials
  tokens: discovery, JWKS with rotation, token endpoint, introspection, faults).

May import: nothing from the proxy: it stands for Clerk, so it must not share the proxy's
understanding of Clerk. The request path never imports it (import contract).
"""

from proxy.emulator.app import ClerkEmulator, run_emulator, seed_demo, serve
from proxy.emulator.issuer_app import (
    IssuerEmulator,
    run_issuer_emulator,
    seed_issuer_demo,
    serve_issuer,
)

__all__ = [
    "ClerkEmulator",
    "IssuerEmulator",
    "run_emulator",
    "run_issuer_emulator",
    "seed_demo",
    "seed_issuer_demo",
    "serve",
    "serve_issuer",
]
