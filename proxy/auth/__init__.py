"""Authentication: from a bearer token to a `Principal`, or a refusal.

- `tokens`: what kind of token a string is (opaque prefixes, JWT, the `mt_` id mistake);
- `clerk`: Clerk's Backend API, instance keys and JWT classes (a sub-package);
- `breaker`: when a failing service (Clerk, an issuer, Redis) may be called again;
- `gate`: the breaker in front of Clerk's or an issuer's API (Retry-After, 429, 5xx), and
  one call to it (its answer read with a cap; no answer is `Unavailable`);
- `keyset`: a JWKS fetched and cached as careful verifiers do (Clerk's and every issuer's);
- `jws`: the one JWT path (header, key, signature, claims), Clerk's and every issuer's;
- `issuers`: other OAuth 2.0 issuers (routing by `iss`, their rules and claim mapping,
  discovery, RFC 7662; a sub-package);
- `claims_json`: strict JSON and NumericDate;
- `budget`: the cost guard on billable Clerk calls, charged to who pays;
- `cache`: verdicts by token hash, with single-flight (a sub-package);
- `verifier`: the one entry point the request path calls, tying the above together.

May import: `proxy.observe`, `proxy.config`, `proxy.core`. Knows nothing of HTTP requests,
routes or Socket.IO: the request path hands it a token string and gets a Principal back.
"""
