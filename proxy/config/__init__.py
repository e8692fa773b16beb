"""Configuration: YAML in, one typed, validated `Config` out (uvicorn's `Config` shape).

- `model`: the typed model (`Config` and its parts), frozen, read on every request;
- `values`: parsing of durations, sizes and `*_file` secrets, and the walker `Reader`;
- `sources`: `${VAR}` substitution, remembering which variables each key's value reads;
- `clerk`: the `clerk:` section; `clerk_keys`: the keys' kind, instance type and place
  (never written in the file);
- `routes`: one route entry; `advice`: what a valid config may still get wrong (warnings);
- `load`: YAML -> `Config`, every problem named by file, key and why;
- `fingerprint`: the live config's content hash and what changed in a reload.

May import: `proxy.core` only. Everything above reads its `Config`; nothing here knows
who reads it.
"""
