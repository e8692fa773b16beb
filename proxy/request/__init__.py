"""The request path: route, authenticate, authorize, forward (aiohttp's door).

- `app`: the `Proxy` (one per process: config, verifier, session, pools, metrics) and the
  aiohttp handler; the request path reads top to bottom in `Proxy.handle`;
- `dispatch`: plain request, WebSocket upgrade or Socket.IO polling;
- `runtime`: what a loaded config compiles to (routes, header rules), swapped on reload;
- `policy`: routes and the authorization decision;
- `lifetime`: the async generator `cleanup_ctx` needs (mypyc compiles none).

May import: `proxy.realtime`, `proxy.http`, `proxy.auth`, `proxy.observe`, `proxy.config`,
`proxy.core`. Never `proxy.emulator`.
"""
