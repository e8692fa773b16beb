"""The Clerk keys: of the right kind, for the right instance, never written in the file.

Clerk has two kinds of instance: development (`sk_test_…` keys, tokens minted for
development) and production (`sk_live_…`). Tokens are scoped to the instance that minted
them, so a development key in a production config (or the reverse) verifies the wrong
tokens: an error. A config's kind is `clerk.instance_type`, or else follows from
`environment` (`production`; `development`, `dev`, `test`, `local`); other environment
names (staging shares either) leave it unknown and unchecked.

Secrets come from the environment or a mounted file. A key written in the YAML — as a
value or as the default of a `${VAR:-…}` — is refused unless `allow_inline_secrets: true`,
which only a development instance may set (the demo's emulator key), and which never
admits an `sk_live_` key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Final

from proxy.config.model import Clerk, Config
from proxy.config.reader import Reader

INSTANCE_TYPES: Final = ("production", "development")
_BY_ENVIRONMENT: Final = {
    "production": "production",
    "development": "development",
    "dev": "development",
    "test": "development",
    "local": "development",
}
# A key in written text: `sk_live_…`, `sk_test_…` or a machine key `ak_…`.
_WRITTEN_KEY: Final = re.compile(r"(?<![A-Za-z0-9_])(sk_live_|sk_test_|ak_)[A-Za-z0-9]")


def instance_type(r: Reader, explicit: str, environment: str) -> tuple[str, str]:
    """The instance's kind ("" when unknown) from `clerk.instance_type` (`explicit`) or
    `environment`, and what says so, for messages."""
    if explicit:
        if explicit not in INSTANCE_TYPES:
            r.problem("clerk.instance_type", f"must be production or development, got {explicit!r}")
            return "", ""
        return explicit, f"clerk.instance_type: {explicit}"
    inferred = _BY_ENVIRONMENT.get(environment.lower(), "")
    return inferred, f"environment: {environment}" if inferred else ""


def check_keys(
    r: Reader,
    *,
    secret_key: str,
    machine_key: str,
    kind: str,
    said_by: str,
    allow_inline: bool,
    written: Mapping[str, str],
) -> None:
    """Every problem of the two keys; `written`: key path → its text in the file."""
    if secret_key and not secret_key.startswith(("sk_live_", "sk_test_")):
        r.problem(
            "clerk.secret_key", "expected a Clerk instance secret key (sk_live_… or sk_test_…)"
        )
    if machine_key and not machine_key.startswith("ak_"):
        r.problem("clerk.machine_secret_key", "expected a Clerk machine secret key (ak_…)")
    if allow_inline and kind == "production":
        r.problem(
            "allow_inline_secrets",
            f"only for local development: this config's Clerk instance is a production one "
            f"({said_by})",
        )
    for path in ("clerk.secret_key", "clerk.machine_secret_key"):
        found = _WRITTEN_KEY.search(written.get(path, ""))
        if found is None:
            continue
        name = path.split(".")[1]
        if found.group(1) == "sk_live_":
            r.problem(
                path,
                "an sk_live_ key is written in the config file; a production key never is "
                f"(not even with allow_inline_secrets): read it from the environment "
                f"({name}: ${{VAR}}) or a mounted file ({name}_file)",
            )
        elif not allow_inline:
            r.problem(
                path,
                "a Clerk secret key is written in the config file; read it from the "
                f"environment ({name}: ${{VAR}}) or a mounted file ({name}_file), or, for "
                "local development only, set allow_inline_secrets: true",
            )
    wrong = {"production": "sk_test_", "development": "sk_live_"}.get(kind)
    if wrong and secret_key.startswith(wrong):
        right = "sk_live_" if kind == "production" else "sk_test_"
        other = "development" if kind == "production" else "production"
        names = r.variables.get("clerk.secret_key", ()) or r.variables.get(
            "clerk.secret_key_file", ()
        )
        source = f" (read from {names[0]})" if names else ""
        r.problem(
            "clerk.secret_key",
            f"an {wrong} key{source} belongs to a {other} instance, but this config's Clerk "
            f"instance is a {kind} one ({said_by}): it would verify the other instance's "
            f"tokens; use the {kind} instance's {right} key",
        )


def check_clerk(r: Reader, cfg: Config, *, written: Mapping[str, str]) -> Clerk:
    """`cfg.clerk` with its instance type settled, its keys checked (`written`: key path →
    its text in the file, from `sources`) and its backoff's bounds in order."""
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
