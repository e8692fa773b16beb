"""docs/spec.md is the users' reference: every error code the proxy can answer and every
metric it exports is listed there, and nothing listed there is missing from the code."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.registry import CollectorRegistry

from proxy.auth.shared.metrics import shared_metrics
from proxy.core import errors
from proxy.observe.metrics import Metrics

SPEC = (Path(__file__).resolve().parent.parent / "docs" / "spec.md").read_text()


def _table_column(heading: str) -> set[str]:
    """The first column of the first table under `## heading`, backticks stripped."""
    section = SPEC.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {re.match(r"\| `([^`]+)`", row).group(1) for row in rows}  # type: ignore[union-attr]


def test_every_error_code_is_documented_and_every_documented_code_exists() -> None:
    codes = {
        value
        for name, value in vars(errors).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[a-z_]+", value)
    } - set(errors.UPSTREAM_CAUSES)  # the access line's `cause`, never an answer's code
    assert codes, "no codes found in proxy.core.errors"
    assert _table_column("Errors the proxy answers itself") == codes


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    shared_metrics(registry)  # registered with the verifier when cache.shared is on
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in registry.collect()
    }
    documented = _table_column("Admin port")
    assert documented == exported
