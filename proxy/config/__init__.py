"""Configuration: YAML in, one typed, validated `Config` out (uvicorn's `Config` shape).

- `model`: the typed model (`Config` and its parts), frozen, read on every request;
- `values`: parsing of durations, sizes, `${VAR}` and `*_file` secrets;
- `load`: YAML -> `Config`, every problem named by file, key and why.

May import: `proxy.core` only. Everything above reads its `Config`; nothing here knows
who reads it.
"""
