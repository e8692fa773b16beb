"""Configuration: YAML in, one typed, validated `Config` out (uvicorn's `Config` shape).

- `model`: the typed model (`Config` and its parts), frozen, read on every request: the
  one place each key, its default and its kind are stated;
- `keys`: how a key is written (its `Kind` and `Key`); `values`: parsing of durations,
  sizes, URLs; `reader`: the walker `Reader`, reading a section by the model's `Key`s;
- `sources`: `${VAR}` substitution, remembering which variables each key's value reads;
- `clerk_keys`: the Clerk keys' kind, instance type and place (never written in the file);
- `routes`, `issuers`, `shared`: what those sections' keys' kinds cannot say alone;
  `advice`: what a valid config may still get wrong (warnings);
- `load`: YAML -> `Config`, every problem named by file, key and why;
- `schema`: the Helm chart's values.schema.json, written from `model`;
- `fingerprint`: the live config's content hash and what changed in a reload.

May import: `proxy.core` only. Everything above reads its `Config`; nothing here knows
who reads it.
"""
