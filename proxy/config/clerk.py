"""The `clerk:` section → `Clerk`: the Backend API (https off loopback), the keys
(`clerk_keys`: of the instance's kind, never written in the file) and how verification
talks to Clerk."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.config.clerk_keys import check_keys, instance_type
from proxy.config.issuers import issuer_url
from proxy.config.model import Clerk
from proxy.config.values import (
    Reader,
    http_url,
    parse_duration,
    positive_duration,
    str_list,
    str_value,
)

_NO_STRINGS: tuple[str, ...] = ()


def parse_clerk(
    r: Reader,
    raw: Any,
    *,
    environment: str,
    allow_inline: bool,
    written: Mapping[str, str],
) -> Clerk:
    """`written`: key path → its text in the file (`sources`), to find keys written there."""
    ck = r.section(
        raw,
        "clerk",
        {
            "api_url",
            "secret_key",
            "secret_key_file",
            "machine_secret_key",
            "machine_secret_key_file",
            "instance",
            "instance_type",
            "issuer",
            "authorized_parties",
            "timeout",
            "jwks_cache_seconds",
            "jwks_min_refetch_seconds",
            "api_version",
            "clock_skew_seconds",
            "miss_deadline",
            "backoff_initial",
            "backoff_max",
        },
    )
    # Every call carries the secret key: https, as for any issuer (http only to loopback,
    # where the emulator runs), whatever the environment is called.
    api_url = r.get(ck, "clerk", "api_url", issuer_url, "https://api.clerk.com")
    secret_key = r.secret(ck, "clerk", "secret_key", required=True)
    machine_key = r.secret(ck, "clerk", "machine_secret_key", required=False)
    kind, said_by = instance_type(r, ck, environment)
    check_keys(
        r,
        secret_key=secret_key,
        machine_key=machine_key,
        kind=kind,
        said_by=said_by,
        allow_inline=allow_inline,
        written=written,
    )
    issuer = r.get(ck, "clerk", "issuer", str_value, "")
    if issuer:
        try:
            http_url(issuer)
        except ValueError as exc:
            r.problem("clerk.issuer", str(exc))
    clerk = Clerk(
        api_url=api_url,
        secret_key=secret_key,
        machine_secret_key=machine_key,
        instance=r.get(ck, "clerk", "instance", str_value, "default"),
        instance_type=kind,
        issuer=issuer.rstrip("/"),
        authorized_parties=r.get(ck, "clerk", "authorized_parties", str_list, _NO_STRINGS),
        timeout=r.get(ck, "clerk", "timeout", parse_duration, 5.0),
        jwks_cache_seconds=r.get(ck, "clerk", "jwks_cache_seconds", parse_duration, 3600.0),
        jwks_min_refetch_seconds=r.get(
            ck, "clerk", "jwks_min_refetch_seconds", parse_duration, 30.0
        ),
        api_version=r.get(ck, "clerk", "api_version", str_value, "2026-05-12"),
        clock_skew_seconds=r.get(ck, "clerk", "clock_skew_seconds", parse_duration, 5.0),
        miss_deadline=r.get(ck, "clerk", "miss_deadline", positive_duration, 1.0),
        backoff_initial=r.get(ck, "clerk", "backoff_initial", positive_duration, 0.1),
        backoff_max=r.get(ck, "clerk", "backoff_max", positive_duration, 10.0),
    )
    if clerk.backoff_max < clerk.backoff_initial:
        r.problem("clerk.backoff_max", "must not be less than clerk.backoff_initial")
    return clerk
