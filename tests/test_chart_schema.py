"""The chart's values.schema.json: generated from the config model, equal to the committed
file, and what Helm (and a JSON-schema validator) says of the shipped values and of a
typo'd key or a wrong type under `config:`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from proxy.config.load import build_config
from proxy.config.schema import render
from proxy.config.sources import substitute
from proxy.config.values import ConfigError
from tests.support import config_dict
from tests.support_deploy import CHART, deep_merge, values_file

SCHEMA_FILE = CHART / "values.schema.json"
ENVIRONMENTS = ("production", "staging", "test")
CONFIGS = Path(__file__).resolve().parent.parent / "config"


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return schema


def _errors(values: dict[str, Any]) -> list[str]:
    """Each error as `path: message` (the path in the values file, dotted)."""
    validator = jsonschema.Draft7Validator(_schema())
    return [
        ".".join(str(p) for p in e.absolute_path) + ": " + e.message
        for e in validator.iter_errors(values)
    ]


def _chart_values(env: str | None = None, **config: Any) -> dict[str, Any]:
    """What Helm validates: values.yaml with the environment's file and `config` over it."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    merged = deep_merge(base, values_file(env)) if env else base
    return deep_merge(merged, {"config": config}) if config else merged


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == render(), (
        "run: python -m proxy.config.schema > helm/clerk-auth-proxy/values.schema.json"
    )


def test_the_schema_is_valid_draft_7() -> None:
    jsonschema.Draft7Validator.check_schema(_schema())


@pytest.mark.parametrize("env", [None, *ENVIRONMENTS])
def test_shipped_values_pass(env: str | None) -> None:
    assert _errors(_chart_values(env)) == []


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_shipped_proxy_configs_pass_as_the_config_block(name: str) -> None:
    # With each `${VAR:-default}`'s default (local.yaml has one in a flow mapping).
    config = yaml.safe_load(substitute((CONFIGS / f"{name}.yaml").read_text(), {}).text)
    assert _errors({"config": config}) == []


@pytest.mark.parametrize(
    ("config", "path", "says"),
    [
        ({"cache": {"ttl": 5}}, "config.cache", "'ttl' was unexpected"),
        ({"lisen": {"port": 8080}}, "config", "'lisen' was unexpected"),
        ({"clerk": {"secret_key_fiel": "/x"}}, "config.clerk", "'secret_key_fiel' was unexpected"),
        ({"admin": {"fast_path": False}}, "config.admin", "'fast_path' was unexpected"),
        ({"verification_budget": {"global": {"ipv4_prefix": 24}}}, "config.verification_budget.global", "'ipv4_prefix'"),
        ({"routes": [{"path": "/a", "scope": ["x"]}]}, "config.routes.0", "'scope' was unexpected"),
        ({"issuers": [{"name": "a", "issuer": "https://a", "audiences": ["x"], "claim": {}}]}, "config.issuers.0", "'claim'"),
        ({"listen": {"port": "http"}}, "config.listen.port", "is not valid"),
        ({"listen": {"port": 70000}}, "config.listen.port", "is not valid"),
        ({"workers": 0}, "config.workers", "is not valid"),
        ({"upstream": {"read_timeout": "soon"}}, "config.upstream.read_timeout", "is not valid"),
        ({"upstream": {"max_body_size": "big"}}, "config.upstream.max_body_size", "is not valid"),
        ({"upstream": {"url": "ftp://x"}}, "config.upstream.url", "is not valid"),
        ({"forward_authorization": "sometimes"}, "config.forward_authorization", "is not valid"),
        ({"logging": {"level": "LOUD"}}, "config.logging.level", "is not one of"),
        ({"routes": [{"path": "/a", "auth": "maybe"}]}, "config.routes.0.auth", "is not one of"),
        ({"routes": [{"name": "no-path"}]}, "config.routes.0", "'path' is a required property"),
        ({"cache": {"refresh_ahead": 1}}, "config.cache.refresh_ahead", "is not valid"),
        ({"cache": "big"}, "config.cache", "is not of type"),
    ],
)
def test_a_typo_or_a_wrong_type_is_refused_naming_the_key(
    config: dict[str, Any], path: str, says: str
) -> None:
    errors = _errors(_chart_values("production", **config))
    assert any(e.startswith(path + ": ") and says in e for e in errors), errors
    # The proxy refuses the same config (the schema is not stricter than the loader).
    raw = deep_merge(config_dict("http://127.0.0.1:3000"), config)
    with pytest.raises(ConfigError):
        build_config(raw, file="c.yaml")


@pytest.mark.parametrize(
    "config",
    [
        {"listen": {"port": "${PORT}"}, "workers": "${WORKERS:-2}"},
        {"upstream": {"max_body_size": "512KiB", "read_timeout": "1.5m"}, "cache": {"ttl_seconds": 30}},
        {"forward_authorization": "yes", "logging": {"level": "debug"}},
        {"routes": [{"path": "/a", "issuers": ["partner"]}, {"path": "/b", "issuers": {"partner": {"scopes": "x y"}}}]},
        {"forward_auth": {"enabled": True, "port": 8081}, "verification_budget": {"per_ip": {"ipv4_prefix": 24}}},
        {"clerk": {"secret_key": None, "secret_key_file": "/var/run/secrets/clerk/secret_key"}},
    ],
)
def test_what_the_proxy_reads_the_schema_admits(config: dict[str, Any]) -> None:
    assert _errors(_chart_values("production", **config)) == []


def test_helm_itself_refuses_a_typo_under_config() -> None:
    helm_python = pytest.importorskip("helm_python")
    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values_file("production"))
        with pytest.raises(Exception, match="ttl"):
            chart.validate_schema(deep_merge(values_file("production"), {"config": {"cache": {"ttl": 5}}}))
        with pytest.raises(Exception, match="port"):
            chart.validate_schema(
                deep_merge(values_file("production"), {"config": {"listen": {"port": "http"}}})
            )


def _schema_keys(schema: dict[str, Any], path: str = "") -> set[str]:
    """Every key path the schema admits under `config:`; a list of sections (and the
    default route, documented with the routes) is one entry."""
    out: set[str] = set()
    for name, sub in schema.get("properties", {}).items():
        key = f"{path}.{name}" if path else name
        if "items" in sub and "properties" in sub["items"]:
            out.add(key + "[]")
        elif "properties" in sub and key != "default_route":
            out |= _schema_keys(sub, key)
        else:
            out.add(key)
    return out


def _documented_keys() -> set[str]:
    """The first column of docs/configuration.md's "Keys" table: `a.b` / `.c` / `_file`."""
    text = (CONFIGS.parent / "docs" / "configuration.md").read_text()
    table = text.split("\n## Keys\n", 1)[1].split("\n## ", 1)[0]
    out: set[str] = set()
    for cell in re.findall(r"^\| ((?:`[^`]+`(?: / )?)+) \|", table, re.MULTILINE):
        first, *more = re.findall(r"`([^`]+)`", cell)
        out.add(first)
        for name in more:
            if name.startswith("_"):
                out.add(first + name)
            elif name.startswith("."):
                out.add(first.rsplit(".", 1)[0] + name)
            else:
                out.add(name)
    return out


def test_every_key_is_documented_and_every_documented_key_exists() -> None:
    keys = _schema_keys(_schema()["properties"]["config"])
    documented = _documented_keys()
    assert sorted(keys - documented) == [], "in the model, not in docs/configuration.md"
    assert sorted(documented - keys) == [], "in docs/configuration.md, not in the model"
