"""RSS of a proxy process holding 0, 10k and 100k cached verifications: each count in a
fresh subprocess that has imported what `clerk-auth-proxy run` imports, entries made
through the real cache exactly as the verifier makes them. `jwt_loaded_mb`: what the
first JWT adds (PyJWT and cryptography load on first use).

- `verified`: every token distinct and accepted; 500 partner machines, 50 scope sets, one
  claims shape — each Principal built from scratch, as parsing Clerk's JSON does. The
  worst case: every entry carries its own Principal and token id.
- `rejected`: every token distinct and refused (401), as in a random-token flood — the
  realistic way a cache reaches 100k entries.
- `sessions`: every token a distinct session JWT of a distinct user, with PyJWT and
  cryptography loaded (as after the first JWT): the worst case, since nothing an entry
  holds is shared with another.
Prints one JSON line."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import subprocess
import sys
from pathlib import Path

# The realm of an opaque token's verdicts (`config.realms`): rejections cached, as Clerk's.
REALM = bytes(16)


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    return status_mb("VmRSS")


async def fill(kind: str, n: int) -> dict[str, float]:
    # Everything `clerk-auth-proxy run` imports before its first request.
    from proxy.auth.cache.store import VerificationCache
    from proxy.config.load import Cache
    from proxy.core.errors import TOKEN_INVALID, ProxyError
    from proxy.core.principal import Principal, encode_claims
    from proxy.observe.metrics import Metrics

    if kind == "sessions":
        import jwt  # noqa: F401
        from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: F401

    cache = VerificationCache(Cache(ttl_seconds=3600, negative_ttl_seconds=3600, max_entries=200_000), b"s" * 32, Metrics())
    gc.collect()
    base = rss_mb()
    for i in range(n):
        if kind == "verified":
            p = Principal(
                type="machine", id=f"mch_{i % 500:027d}", token_type="m2m_token", token_id=f"mt_{i:032x}",
                scopes=frozenset({f"mch_{i % 50:027d}"}), claims_json=encode_claims({"tier": "gold"}), expires_at=None,
            )

            async def load(p: Principal = p) -> Principal:
                return p

            await cache.get(cache.key(f"mt_{i:048d}"), load, realm=REALM)
        elif kind == "sessions":
            p = Principal(
                type="user", id=f"user_{i:027d}", token_type="session_token", token_id=f"sess_{i:027d}",
                scopes=frozenset(), claims_json=None, expires_at=2_000_000_000.0 + i,
            )

            async def load_session(p: Principal = p) -> Principal:
                return p

            await cache.get(cache.key(f"ey{i:048d}"), load_session, realm=REALM)
        else:

            async def refuse() -> Principal:
                raise ProxyError(TOKEN_INVALID, "token is not valid", token_type="m2m_token")

            with contextlib.suppress(ProxyError):
                await cache.get(cache.key(f"mt_{i:048d}"), refuse, realm=REALM)
    gc.collect()
    assert len(cache) == n
    total = rss_mb()
    # RSS split: the heap (anonymous) and mapped files, mostly shared libraries, whose
    # resident share moves by a megabyte or two from one run to the next.
    return {
        "rss_mb": round(total, 1), "cache_mb": round(total - base, 1),
        "anon_mb": round(status_mb("RssAnon"), 1), "file_mb": round(status_mb("RssFile"), 1),
    }


def child(kind: str, n: int) -> None:
    print(json.dumps({"kind": kind, "entries": n, **asyncio.run(fill(kind, n))}))


def jwt_mb() -> float:
    """What the first JWT adds: PyJWT and cryptography are imported on first use."""

    gc.collect()
    before = rss_mb()
    import jwt  # noqa: F401
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: F401

    return rss_mb() - before


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] == "jwt":
        print(json.dumps({"jwt_loaded_mb": round(jwt_mb(), 1)}))
        return
    if len(sys.argv) > 2:
        child(sys.argv[1], int(sys.argv[2]))
        return
    rows = []
    for kind, n in (
        ("verified", 0),
        ("verified", 10_000),
        ("verified", 100_000),
        ("rejected", 100_000),
        ("sessions", 100_000),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "bench.memory", kind, str(n)],
            capture_output=True, text=True, check=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "jwt"], capture_output=True, text=True, check=True
    ).stdout
    extra = json.loads(out.strip().splitlines()[-1])
    print(json.dumps({"rows": rows, **extra, "target": "<= 60 MB RSS at 100k"}))


if __name__ == "__main__":
    main()
