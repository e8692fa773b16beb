"""`clerk-auth-proxy`: run, check-config, emulate-clerk, emulate-issuer, demo (argument
parsing and exit codes; serving one config is `server.Server`).

Exit codes: 0 after a clean stop; 2 when the config is invalid or a listener's address
cannot be had (one log line naming the address and the config key); 1 when `--workers`
gives up on workers that keep dying.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy import __version__
from proxy.config.load import Config, ConfigError, load_config
from proxy.observe.logs import configure_logging
from proxy.process import revoke
from proxy.process.descriptors import raise_to_hard_limit
from proxy.process.ports import ListenError, probe
from proxy.process.server import Server
from proxy.process.workers import REUSE_PORT_ENV, run_workers


def _load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{len(exc.issues)} problem(s) in {path}:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    configure_logging(config.logging.level)
    workers = args.workers or config.workers
    try:
        if workers > 1:
            # N workers would each fail on a taken port: one look first, one line.
            control = config.revocation.listen if config.revocation.secret else None
            listeners = [("listen", config.listen), ("admin", config.admin)]
            if control is not None:
                listeners.append(("revocation.listen.port", control))
            if config.forward_auth is not None:
                listeners.append(("forward_auth", config.forward_auth))
            for key, where in listeners:
                probe(where.host, where.port, key, config.variables)
            raise_to_hard_limit()  # before the workers start: they inherit it
            return run_workers(workers, args.config, config.admin, control)

        reuse_port = os.environ.get(REUSE_PORT_ENV) == "1"

        async def main() -> None:
            await Server(config, Path(args.config), reuse_port=reuse_port).serve()

        try:
            import uvloop
        except ImportError:  # pragma: no cover - platforms without uvloop
            asyncio.run(main())
        else:
            uvloop.run(main())
    except ListenError as exc:
        exc.log()
        return 2
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    for key, why in config.warnings:
        print(f"warning: {args.config}: {key}: {why}", file=sys.stderr)
    kind = f" ({config.clerk.instance_type})" if config.clerk.instance_type else ""
    print(
        f"{args.config}: OK (environment {config.environment}, "
        f"Clerk instance {config.clerk.instance}{kind} at {config.clerk.api_url}, "
        f"{len(config.routes)} routes)"
    )
    return 0


def cmd_emulate_clerk(args: argparse.Namespace) -> int:
    from proxy.emulator import run_emulator

    run_emulator(args.host, args.port, args.secret_key)
    return 0


def cmd_emulate_issuer(args: argparse.Namespace) -> int:
    from proxy.emulator import run_issuer_emulator

    run_issuer_emulator(args.host, args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.process.demo import run_demo

    return run_demo(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clerk-auth-proxy",
        description="Authenticating reverse proxy for APIs behind Clerk.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve the proxy and the admin port")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument(
        "--workers", type=int, default=0, help="processes sharing the port (SO_REUSEPORT)"
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file; exit 2 on problems")
    check.add_argument("--config", required=True)
    check.set_defaults(func=cmd_check_config)

    emu = sub.add_parser("emulate-clerk", help="serve a Clerk Backend API emulator for tests")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=3100)
    emu.add_argument("--secret-key", default="sk_test_emulator")
    emu.set_defaults(func=cmd_emulate_clerk)

    iss = sub.add_parser(
        "emulate-issuer",
        help="serve an OAuth 2.0 issuer emulator (client credentials, JWKS, introspection)",
    )
    iss.add_argument("--host", default="127.0.0.1")
    iss.add_argument("--port", type=int, default=3200)
    iss.set_defaults(func=cmd_emulate_issuer)

    demo = sub.add_parser("demo", help="proxy + demo upstream + Clerk emulator, all local")
    demo.add_argument("--config", default="config/local.yaml")
    demo.set_defaults(func=cmd_demo)

    revoke.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
