"""HTTP/1.1 machinery shared by both front doors, with no notion of routes or tokens.

- `http1`: request and answer heads as bytes: parsing, framing, hop-by-hop fields (no I/O);
- `headers`: what the upstream receives: client `X-Auth-*` stripped, the principal injected;
- `forward`: aiohttp's door's relay of one request to the upstream and its answer back;
- `upstream`: the fast path's pool of upstream connections and its answer parser.

May import: `proxy.observe`, `proxy.config`, `proxy.core`.
"""
