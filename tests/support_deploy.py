"""Pure helpers for tests/test_deploy.py: Dockerfile parsing, chart rendering, manifest
validation, and the PromQL metric-name check. No cluster, no Docker engine."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Helm's coalescing of values, as the render-and-check recipe does it.
from scripts.render_check import deep_merge

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "clerk-auth-proxy"
ENVIRONMENTS = ("production", "staging", "test")

# --- Dockerfile ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    stage: str
    command: str  # upper-case: FROM, RUN, COPY, ...
    flags: tuple[str, ...]  # leading --flag=value options
    rest: str  # what follows the flags, continuation lines joined


_DIRECTIVE = re.compile(r"^#\s*[a-z]+\s*=")


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their stage name (the FROM's `AS` name, or its index)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker too
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        logical.append(current + stripped)
        current = ""
    if current.strip():
        logical.append(current.strip())

    out: list[Instruction] = []
    stage = ""
    stages = 0
    for line in logical:
        command, _, rest = line.partition(" ")
        command = command.upper()
        flags: list[str] = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if command == "FROM":
            words = rest.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(stages)
            stages += 1
        out.append(Instruction(stage, command, tuple(flags), rest))
    return out


def flag_options(flag: str) -> dict[str, str]:
    """`--mount=type=bind,from=build,target=/w` → {"type": "bind", "from": "build", ...}."""
    _, _, value = flag.partition("=")
    return dict(item.split("=", 1) for item in value.split(",") if "=" in item)


# --- Helm ---------------------------------------------------------------------------------


# What an install adds to a values file: the images (`--set`, docs/deploy.md §3). The chart
# has none of its own: it refuses to render without them (`required`).
IMAGES: dict[str, Any] = {
    "app": {"image": {"repository": "registry.example.com/scores-api", "tag": "1.4.2"}},
    "proxy": {"image": {"repository": "registry.example.com/clerk-auth-proxy"}},
}


def values_file(env: str) -> dict[str, Any]:
    data = yaml.safe_load((CHART / f"values-{env}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def install_values(env: str) -> dict[str, Any]:
    """`-f values-<env>.yaml` plus the images' `--set`s, as docs/deploy.md installs."""
    return deep_merge(values_file(env), IMAGES)


def render_chart(
    values: Mapping[str, Any], *, chart: Path = CHART, release: str = "scores"
) -> dict[str, str]:
    """Template path → rendered text, as `helm template` would produce offline."""
    import helm_python

    with helm_python.Chart.load(str(chart)) as loaded:
        rendered: dict[str, str] = loaded.render(
            dict(values), name=release, namespace="scores", is_install=True
        )
    return rendered


def manifests(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered templates (NOTES.txt is not a manifest)."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                docs.append(doc)
    return docs


def by_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def pod_containers(deployment: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


# A ServiceMonitor is a CRD: kubernetes-validate ships no schema for it. This schema is
# written from the monitoring.coreos.com/v1 API reference for exactly the fields the chart
# emits, and rejects anything else (strict, like the bundled schemas).
_OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _OBJECT_META,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        },
                    },
                },
            },
        },
    },
}


def validate_manifest(doc: Mapping[str, Any], kube_version: str) -> str:
    """Strictly validate one object; returns what it was checked against."""
    if doc.get("kind") == "ServiceMonitor":
        import jsonschema  # type: ignore[import-untyped]

        jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(dict(doc))
        return "checked-in ServiceMonitor schema"
    import kubernetes_validate  # type: ignore[import-untyped]

    return str(kubernetes_validate.validate(dict(doc), kube_version, strict=True))


# --- Prometheus ---------------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every series name the proxy can export, with the suffixes Prometheus adds."""
    from proxy.auth.shared.metrics import shared_metrics
    from proxy.observe.metrics import Metrics

    metrics = Metrics()
    shared_metrics(metrics.registry)  # registered with the verifier when cache.shared is on
    names: set[str] = set()
    for family in metrics.registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        else:
            names.add(family.name)
    return names


# Grafana's template variables are not PromQL; stand-ins keep the expression parseable.
_GRAFANA_VARS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}
_GRAFANA_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# A variable inside a label matcher's value (namespace=~"$namespace") stays a string.
_MATCHER_VALUE = re.compile(r'((?:=~|!~|!=|=)\s*)"([^"]*)"')


def substitute_grafana_vars(expr: str) -> str:
    expr = _MATCHER_VALUE.sub(
        lambda m: m.group(1) + '"' + _GRAFANA_VAR.sub("x", m.group(2)) + '"', expr
    )

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return _GRAFANA_VARS.get(name, "1")

    return _GRAFANA_VAR.sub(repl, expr)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (raises ValueError if it does not parse)."""
    import promql_parser

    ast = promql_parser.parse(substitute_grafana_vars(expr))
    found: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            else:
                for matcher in node.matchers.matchers:
                    if matcher.name == "__name__":
                        found.add(matcher.value)
        return True

    promql_parser.walk(ast, visit)
    return found
