"""The `clerk:` section's checks beyond each key's kind: the keys (`clerk_keys`: of the
instance's kind, never written in the file) and the backoff's bounds."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from proxy.config.clerk_keys import check_keys, instance_type
from proxy.config.model import Clerk, Config
from proxy.config.values import Reader


def check_clerk(r: Reader, cfg: Config, *, written: Mapping[str, str]) -> Clerk:
    """`cfg.clerk` with its instance type settled; `written`: key path → its text in the
    file (`sources`), to find keys written there."""
    clerk = cfg.clerk
    kind, said_by = instance_type(r, clerk.instance_type, cfg.environment)
    check_keys(
        r,
        secret_key=clerk.secret_key,
        machine_key=clerk.machine_secret_key,
        kind=kind,
        said_by=said_by,
        allow_inline=cfg.allow_inline_secrets,
        written=written,
    )
    if clerk.backoff_max < clerk.backoff_initial:
        r.problem("clerk.backoff_max", "must not be less than clerk.backoff_initial")
    return dataclasses.replace(clerk, instance_type=kind)
