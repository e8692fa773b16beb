"""The CPU of a cache miss on a JWT (issue 27 point 6): `--tokens` fresh, never-cached
tokens of one issuer (the issuer emulator's RS256 access tokens) and of Clerk (session
JWTs from the Clerk emulator), each verified once through the proxy's verifier
(`ClerkVerifier.verify`, as a request's miss calls it: routing, classification, the one
JWT path, the claim mapping, the cache's store — its key held, the miss is verified in
the caller, without a flight), the same without the cache (`jwt_path`: what a miss runs),
PyJWT's bare `jwt.decode` and the bare RS256 signature check on the same tokens, in one
run.

Both emulators serve on loopback; their keys are fetched before the clock starts, so no
fetch is counted. CPU is this process's (`time.process_time`), per 1,000 tokens, the best
of `--rounds` rounds (fresh tokens each round). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from proxy.auth.verifier import ClerkVerifier
from proxy.config.load import build_config
from proxy.emulator.app import ClerkEmulator
from proxy.emulator.issuer_app import IssuerEmulator
from proxy.observe.metrics import Metrics

API = "https://api.bench.example"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def cpu_per_1000(count: int, run: Callable[[], None]) -> float:
    start = time.process_time()
    run()
    return (time.process_time() - start) * 1000 / count * 1000  # CPU-ms per 1,000


async def acpu_per_1000(count: int, run: Callable[[], Awaitable[None]]) -> float:
    start = time.process_time()
    await run()
    return (time.process_time() - start) * 1000 / count * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    clerk, issuer = ClerkEmulator("sk_test_bench"), IssuerEmulator()
    runners = []
    runner, clerk_url = await serve(clerk.app)
    runners.append(runner)
    runner, issuer.issuer = await serve(issuer.app)
    runners.append(runner)
    raw = {
        "upstream": {"url": "http://127.0.0.1:1"},
        "clerk": {"api_url": clerk_url, "secret_key": "sk_test_bench", "issuer": clerk.issuer},
        "issuers": [
            {"name": "it", "preset": "authgear", "issuer": issuer.issuer, "audiences": [API]}
        ],
        "cache": {"max_entries": 1_000_000},
    }
    config = build_config(raw, file="bench")
    clerk_key = clerk.private_key.public_key()
    issuer_key = issuer.active.private_key.public_key()
    rs256 = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)

    def issuer_tokens(n: int) -> list[str]:
        now = time.time()
        return [
            issuer.mint({"iss": issuer.issuer, "aud": API, "iat": now, "exp": now + 600,
                         "jti": f"j{i}-{now}", "client_id": "svc-a", "sub": "client_id_svc-a",
                         "scope": "scores:read"})
            for i in range(n)
        ]

    def clerk_tokens(n: int) -> list[str]:
        return [clerk.mint_session_jwt(f"user_{i:027d}", expires_in=600) for i in range(n)]

    results: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession() as session:
        verifier = ClerkVerifier(config, session, Metrics())
        # Keys fetched before the clock starts.
        await verifier.verify(issuer_tokens(1)[0], "127.0.0.1")
        await verifier.verify(clerk_tokens(1)[0], "127.0.0.1")
        for name, make, key, decode_opts in (
            ("issuer", issuer_tokens, issuer_key, {"audience": API, "issuer": issuer.issuer}),
            ("clerk", clerk_tokens, clerk_key, {"issuer": clerk.issuer}),
        ):
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                tokens = make(args.tokens)

                async def through_verifier(tokens: list[str] = tokens) -> None:
                    for token in tokens:
                        await verifier.verify(token, "127.0.0.1")

                async def jwt_path(tokens: list[str]) -> None:
                    for token in tokens:
                        load, _, _, at_once = verifier._loader(token, "127.0.0.1")
                        if at_once is None or at_once() is None:
                            await load()

                def bare_decode(tokens: list[str] = tokens, key: Any = key,
                                opts: dict[str, Any] = decode_opts) -> None:
                    for token in tokens:
                        jwt.decode(token, key, algorithms=["RS256"], leeway=5, **opts)

                def bare_signature(tokens: list[str] = tokens, key: Any = key) -> None:
                    for token in tokens:
                        signing_input, _, signature = token.rpartition(".")
                        assert rs256.verify(
                            signing_input.encode(), key, jwt.utils.base64url_decode(signature)
                        )

                # The JWT step alone (routing, classification, the one JWT path, the claim
                # mapping: what a miss runs, with the keys held), without the cache: other
                # fresh tokens.
                others = make(args.tokens)
                round_ = {
                    "verifier": await acpu_per_1000(len(tokens), through_verifier),
                    "jwt_path": await acpu_per_1000(len(others), lambda t=others: jwt_path(t)),
                    "jwt_decode": cpu_per_1000(len(tokens), bare_decode),
                    "signature": cpu_per_1000(len(tokens), bare_signature),
                }
                best = {k: min(v, best.get(k, v)) for k, v in round_.items()}
            best["verifier_vs_signature"] = best["verifier"] / best["signature"]
            best["verifier_vs_jwt_decode"] = best["verifier"] / best["jwt_decode"]
            best["jwt_path_vs_signature"] = best["jwt_path"] / best["signature"]
            results[name] = {k: round(v, 2) for k, v in best.items()}
        await verifier.close()
    for runner in runners:
        await runner.cleanup()
    print(json.dumps({"cpu_ms_per_1000_tokens": results, "tokens": args.tokens}))


if __name__ == "__main__":
    asyncio.run(main())
