"""What one process shares with the others through Redis/Valkey (`cache.shared`).

- `connection`: the redis-py client from the URL, every call bounded and behind
  `proxy.auth.breaker`;
- `codec`: cache entries as stored, MAC'd with a key derived from the Clerk secret key;
- `level`: the second level of the verification cache, with cluster-wide single-flight;
- `budget`: the cost guard's buckets in Redis (one budget for the cluster);
- `events`: the cluster's channel (landed verifications, revocations);
- `revocation`: revoked token ids and subjects, here and in Redis;
- `cluster`: the above tied together for the verifier, and `Revocations`;
- `metrics`: `authproxy_shared_cache_*` and the revocation counters.

May import: `proxy.auth.cache` (the entries it stores), `proxy.auth.breaker`,
`proxy.auth.budget` (the per-pod guard's refusal),
`proxy.observe`, `proxy.config`, `proxy.core`, and redis-py. Never on a first-level hit; never holds or stores a token.
"""
