"""Revocation from outside: `POST /revoke` on the control listener (`revocation.listen`,
loopback by default, never the scrape port), and `clerk-auth-proxy revoke`, which calls it.

The endpoint needs `Authorization: Bearer <revocation.secret>` (from a file); without
one there is no control listener. Body: `{"token_id": "mt_…"}` or `{"subject": "mch_…"}`,
optionally `"issuer"` (whose token: `clerk`, the default, or an `issuers[].name`),
`"reason"`, `"ttl_seconds"` (how long to refuse; by default the token's expiry when
known, else `revocation.default_ttl_seconds`) and `"at_clerk": true` (also revoke the
token at Clerk: M2M tokens and API keys, by id).

A value shaped like a token itself (`mt_`/`ak_`/`oat_` secrets, JWTs) is refused, by the
CLI before it sends anything and by the endpoint: revoking "by id" with a secret would
store, publish and echo the live secret and end nothing.
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import sys
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.auth.shared.revocation import CLERK, KINDS, MAX_TTL, valid_value
from proxy.auth.tokens import is_secret
from proxy.core.errors import (
    BAD_REQUEST,
    CLERK_REVOKE_FAILED,
    PAYLOAD_TOO_LARGE,
    REVOCATION_DISABLED,
    REVOCATION_UNAVAILABLE,
    STATUS,
    TOKEN_INVALID,
    TOKEN_MISSING,
    ProxyError,
)
from proxy.request.app import PROXY

MAX_BODY = 4096
# The CLI's exit code when the revocation was applied where it landed but did not
# propagate (no shared level): the operator must not take it for done everywhere.
NOT_PROPAGATED = 3
SECRET_GIVEN = (
    "that is a token itself (a secret), not its id: revoke by the token's id (mt_, ak_ or "
    "oat_ followed by 32 hex digits, as X-Auth-Token-Id and Clerk's dashboard show it), "
    "and rotate the secret"
)


def refusal(code: str, message: str) -> web.Response:
    return ProxyError(code, message).response()


class BadRequest(ValueError):
    pass


def parse_request(
    raw: bytes, issuers: Collection[str]
) -> tuple[str, str, str, str, float | None, bool]:
    """(issuer, kind, value, reason, ttl, at_clerk), or BadRequest saying what is wrong;
    `issuers`: the configured issuers' names (Clerk's is always there)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    fields = {"token_id", "subject", "issuer", "reason", "ttl_seconds", "at_clerk"}
    unknown = sorted(set(body) - fields)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    given = [k for k in KINDS if k in body]
    if len(given) != 1:
        raise BadRequest("give exactly one of token_id and subject")
    kind = given[0]
    value = body[kind]
    if not valid_value(value):
        raise BadRequest(f"{kind} must be an id: visible ASCII, at most 256 characters")
    if is_secret(value):
        raise BadRequest(f"{kind}: {SECRET_GIVEN}")
    issuer = body.get("issuer", CLERK)
    if not isinstance(issuer, str) or (issuer != CLERK and issuer not in issuers):
        raise BadRequest(f"issuer must be {CLERK!r} or the name of a configured issuer")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 200:
        raise BadRequest("reason must be a string of at most 200 characters")
    ttl = body.get("ttl_seconds")
    if ttl is not None and (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or not 0 < ttl <= MAX_TTL
    ):
        raise BadRequest("ttl_seconds must be a number of seconds above 0 (at most 10 years)")
    at_clerk = body.get("at_clerk", False)
    if not isinstance(at_clerk, bool):
        raise BadRequest("at_clerk must be true or false")
    if at_clerk and (kind != "token_id" or issuer != CLERK):
        raise BadRequest("Clerk revokes its own tokens by id only: at_clerk needs token_id")
    return issuer, kind, value, reason, None if ttl is None else float(ttl), at_clerk


async def handle_revoke(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    rt = proxy.runtime
    secret = rt.config.revocation.secret
    if not secret:
        return refusal(REVOCATION_DISABLED, "revocation.secret is not configured")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return refusal(TOKEN_MISSING, "send Authorization: Bearer <revocation secret>")
    if not hmac.compare_digest(given.strip().encode(), secret.encode()):
        return refusal(TOKEN_INVALID, "wrong revocation secret")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return refusal(PAYLOAD_TOO_LARGE, f"at most {MAX_BODY} bytes")
    try:
        issuer, kind, value, reason, ttl, at_clerk = parse_request(
            raw, {i.name for i in rt.config.issuers}
        )
    except BadRequest as exc:
        return refusal(BAD_REQUEST, str(exc))
    revoke = getattr(rt.verifier, "revoke", None)
    if revoke is None:
        return refusal(REVOCATION_DISABLED, "this verifier cannot revoke")
    outcome = await revoke(issuer, kind, value, ttl=ttl, reason=reason, at_clerk=at_clerk)
    body: dict[str, Any] = outcome.body()
    status = 200
    if outcome.error is not None:
        status = STATUS[REVOCATION_UNAVAILABLE]
        body["error"] = {"code": REVOCATION_UNAVAILABLE, "message": outcome.error}
    # `body()` carries Clerk's answer when at_clerk asked for one.
    clerk = outcome.clerk
    if clerk is not None and clerk.get("status") != "revoked" and status == 200:
        status = STATUS[CLERK_REVOKE_FAILED]
        body["error"] = {"code": CLERK_REVOKE_FAILED, "message": clerk.get("message", "")}
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


# -- the CLI


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "revoke",
        help="revoke a token id or a subject on every proxy (through one's control listener)",
    )
    p.add_argument(
        "--url",
        "--admin-url",
        dest="url",
        default="http://127.0.0.1:9091",
        help="the proxy's control listener (revocation.listen; default %(default)s, the "
        "default listener seen from inside the pod)",
    )
    p.add_argument("--secret-file", required=True, help="file holding revocation.secret")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--token-id", help="the token's id (mt_…, ak_…, oat_…, a JWT's jti)")
    who.add_argument("--subject", help="every token of this machine/user (mch_…, user_…)")
    p.add_argument(
        "--issuer",
        default=CLERK,
        help=f"whose token: {CLERK!r} (the default) or the name of a configured issuer",
    )
    p.add_argument("--reason", default="")
    p.add_argument("--ttl", type=float, help="seconds to refuse (default: the token's expiry)")
    p.add_argument("--at-clerk", action="store_true", help="also revoke it at Clerk")
    p.set_defaults(func=cmd_revoke)


def cmd_revoke(args: argparse.Namespace) -> int:
    """0: revoked on every proxy; 1: refused or failed; 2: a usage error (nothing sent);
    3 (`NOT_PROPAGATED`): applied on the receiving proxy only."""
    value = args.token_id or args.subject
    if is_secret(value):
        # Never sent, never printed: it would land in Redis, on the channel and in logs.
        flag = "--token-id" if args.token_id else "--subject"
        print(f"{flag}: {SECRET_GIVEN}", file=sys.stderr)
        return 2
    try:
        secret = Path(args.secret_file).read_text().strip()
    except OSError as exc:
        print(f"cannot read --secret-file {args.secret_file!r}: {exc.strerror}", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"reason": args.reason, "at_clerk": args.at_clerk}
    if args.token_id:
        body["token_id"] = args.token_id
    else:
        body["subject"] = args.subject
    if args.issuer != CLERK:
        body["issuer"] = args.issuer
    if args.ttl is not None:
        body["ttl_seconds"] = args.ttl
    request = urllib.request.Request(  # noqa: S310 - the operator's own control URL
        args.url.rstrip("/") + "/revoke",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            status, answer = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(answer.decode(errors="replace"))
    if status != 200:
        return 1
    try:
        propagated = json.loads(answer).get("propagated") is True
    except (ValueError, AttributeError):
        propagated = False
    if not propagated:
        print(
            "WARNING: revocation NOT propagated: applied on the proxy that answered only "
            "(no shared level, cache.shared); other pods still accept the token until they "
            "are revoked one by one or it expires",
            file=sys.stderr,
        )
        return NOT_PROPAGATED
    return 0
