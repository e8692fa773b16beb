"""Clerk: its Backend API, its instance keys, and what each class of its JWTs must carry.

- `api`: the Backend API client (one `ClientSession`; the three verify endpoints, strict
  answer parsing, error mapping), behind `proxy.auth.gate`;
- `keys`: the instance JWKS (a `proxy.auth.keyset`) and Clerk's rules for the one JWT path
  (`proxy.auth.jws`);
- `classes`: per class of Clerk JWT (session, M2M, OAuth), what it must carry and what of it
  may authorize.

May import: the shared pieces of `proxy.auth` (`tokens`, `breaker`, `gate`, `keyset`,
`jws`, `claims_json`), `proxy.observe`, `proxy.config`, `proxy.core`; never
`proxy.auth.issuers` (Clerk and other issuers share only the pieces above) nor the
verifier that ties them together.
"""
