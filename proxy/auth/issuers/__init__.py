"""Other OAuth 2.0 issuers (Authgear, any RFC 9068 / RFC 7662 issuer).

- `routing`: which issuer a token belongs to (its `iss`, exactly) and its verification there;
- `claims`: an issuer's `jws.Rules` and its verified claims mapped to a Principal;
- `discovery`: OpenID Connect Discovery / RFC 8414 metadata (keys, introspection endpoint);
- `introspection`: RFC 7662 introspection of an issuer's opaque tokens;
- `calls`: the HTTP calls to an issuer, behind its own `proxy.auth.gate`, with metrics.

May import: the shared pieces of `proxy.auth` (`tokens`, `breaker`, `gate`, `keyset`,
`jws`, `claims_json`), `proxy.observe`, `proxy.config`, `proxy.core`; never
`proxy.auth.clerk` nor the verifier that ties them together.
"""
