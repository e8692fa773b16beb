"""A Clerk Backend API emulator for the demo, our tests and users' own tests: M2M tokens,
OAuth access tokens, API keys, JWKS and session JWTs, with switchable faults.

- `app`: the aiohttp application and `ClerkEmulator` (start/stop it in a test);
- `state`: tokens, machines and keys in memory;
- `wire`: Clerk's JSON shapes and error bodies.

May import: nothing from the proxy: it stands for Clerk, so it must not share the proxy's
understanding of Clerk. The request path never imports it (import contract).
"""

from proxy.emulator.app import ClerkEmulator, make_fault, run_emulator, seed_demo, serve

__all__ = ["ClerkEmulator", "make_fault", "run_emulator", "seed_demo", "serve"]
