"""Render the chart and run `clerk-auth-proxy check-config` on the config it renders, before
installing: a typo under `config:` fails here, naming the key, instead of in a pod that
crash-loops (docs/deploy.md, "Check before you install").

    python scripts/render_check.py -f helm/clerk-auth-proxy/values-production.yaml \\
        --set app.image.repository=registry.example.com/scores-api --set app.image.tag=1.4.2 \\
        --set proxy.image.repository=registry.example.com/clerk-auth-proxy

Renders with `helm template` when `helm` is on PATH, else with helm-python-sdk (Helm's own
Go engine as a Python wheel: `make venv` installs it), so a host without helm can check too.
No cluster is asked. The Clerk keys and the Secrets' files are not on this host: each
variable the pod fills from a Secret gets a placeholder of the right shape (an `sk_live_` or
`sk_test_` key as the config's instance kind asks), and each `*_file` under a Secret's mount
a placeholder file; every other value is checked as the pod would read it.

Exit status: 0 when the chart renders and every rendered config passes; 1 when the chart
does not render (Helm's message names the value); 2 when a config has problems
(check-config's lines name file and key).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "clerk-auth-proxy"
PROXY_CONTAINER = "clerk-auth-proxy"
# Environments whose Clerk instance is a development one when `clerk.instance_type` is not
# set: proxy/config/clerk_keys.py's rule (tests/test_deploy.py holds the two equal).
DEVELOPMENT_ENVIRONMENTS = frozenset({"development", "dev", "test", "local"})


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values: maps merge, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class RenderError(Exception):
    pass


def render(args: argparse.Namespace) -> str:
    """The chart's manifests, as one multi-document YAML text."""
    helm = shutil.which("helm") if args.renderer in ("auto", "helm") else None
    if args.renderer == "helm" and helm is None:
        raise RenderError("--renderer helm: no helm on PATH")
    if helm is not None:
        cmd = [helm, "template", args.release, str(args.chart), "--namespace", args.namespace]
        for path in args.values:
            cmd += ["--values", path]
        for expr in args.set:
            cmd += ["--set", expr]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            raise RenderError(done.stderr.strip())
        return done.stdout
    try:
        import helm_python
    except ImportError:
        raise RenderError(
            "neither helm nor helm-python-sdk: install one (`make venv` installs the second)"
        ) from None
    values: dict[str, Any] = {}
    try:
        for path in args.values:
            values = deep_merge(values, helm_python.values_from_yaml(Path(path).read_text()))
        for expr in args.set:
            values = deep_merge(values, helm_python.parse_set_string(expr))
        with helm_python.Chart.load(str(args.chart)) as chart:
            rendered: dict[str, str] = chart.render(
                values, name=args.release, namespace=args.namespace, is_install=True
            )
    except helm_python.HelmError as exc:
        raise RenderError(str(exc)) from None
    return "\n---\n".join(
        text for path, text in sorted(rendered.items()) if path.endswith((".yaml", ".yml"))
    )


def objects(text: str) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict):
            yield doc


def proxy_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The proxy container as the chart renders it ({} with `standalone: false`)."""
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            if container.get("name") == PROXY_CONTAINER:
                return dict(container)
    return {}


def instance_key(config: Mapping[str, Any]) -> str:
    """A placeholder Clerk instance key of the kind the config's instance is."""
    clerk = config.get("clerk") or {}
    kind = clerk.get("instance_type") or (
        "development"
        if str(config.get("environment", "")).lower() in DEVELOPMENT_ENVIRONMENTS
        else "production"
    )
    prefix = "sk_test_" if kind == "development" else "sk_live_"
    return prefix + secrets.token_hex(20)


def placeholders(config: Mapping[str, Any], name: str) -> str:
    """What stands in for the Secret's value `name` (an env var or a file's key)."""
    if "machine" in name.lower():
        return "ak_" + secrets.token_hex(20)
    if "secret_key" in name.lower():
        return instance_key(config)
    return "placeholder-" + secrets.token_hex(16)


def secret_env(container: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment: literal values as they are, Secret refs as placeholders."""
    env = {"CLERK_SECRET_KEY": instance_key(config)}  # the chart's fixed name
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in (item.get("valueFrom") or {}):
            env[item["name"]] = placeholders(config, item["name"])
    return env


def secret_mounts(container: Mapping[str, Any]) -> list[str]:
    return [
        m["mountPath"].rstrip("/") + "/"
        for m in container.get("volumeMounts", [])
        if m.get("name", "").endswith("-secret")
    ]


def stand_in_files(node: Any, mounts: list[str], into: Path, config: Mapping[str, Any]) -> Any:
    """`node` with every `*_file` under a Secret's mount pointed at a placeholder file."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if (
                isinstance(key, str)
                and key.endswith("_file")
                and isinstance(value, str)
                and any(value.startswith(m) for m in mounts)
            ):
                path = into / f"{len(list(into.iterdir()))}-{Path(value).name}"
                body = placeholders(config, key.removesuffix("_file"))
                if key == "ca_file":
                    body = "-----BEGIN CERTIFICATE-----\n"
                path.write_text(body + "\n")
                out[key] = str(path)
            else:
                out[key] = stand_in_files(value, mounts, into, config)
        return out
    if isinstance(node, list):
        return [stand_in_files(v, mounts, into, config) for v in node]
    return node


def check_config_command() -> list[str]:
    found = shutil.which("clerk-auth-proxy")
    if found is not None:
        return [found, "check-config"]
    return [sys.executable, "-m", "proxy.process.cli", "check-config"]


def check(docs: list[dict[str, Any]]) -> int:
    maps = [
        d for d in docs if d.get("kind") == "ConfigMap" and "config.yaml" in (d.get("data") or {})
    ]
    if not maps:
        print("render-check: the rendered chart has no ConfigMap with config.yaml", file=sys.stderr)
        return 2
    container = proxy_container(docs)
    worst = 0
    for cm in maps:
        name = cm["metadata"]["name"]
        text = cm["data"]["config.yaml"]
        config = yaml.safe_load(text) or {}
        with tempfile.TemporaryDirectory(prefix="render-check-") as tmp:
            files = Path(tmp) / "secrets"
            files.mkdir()
            mounts = secret_mounts(container)
            if mounts and isinstance(config, dict):
                text = yaml.safe_dump(stand_in_files(config, mounts, files, config))
            # Named for the ConfigMap: check-config's lines start with this name.
            path = Path(tmp) / f"configmap-{name}.config.yaml"
            path.write_text(text)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLERK_")}
            env.update(secret_env(container, config))
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            )
            print(f"render-check: ConfigMap {name}, config.yaml:", flush=True)
            done = subprocess.run(  # noqa: S603
                [*check_config_command(), "--config", path.name], env=env, cwd=tmp
            )
            worst = max(worst, done.returncode)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("--release", default="scores")
    parser.add_argument("--namespace", default="scores")
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--renderer", choices=("auto", "helm", "python"), default="auto")
    args = parser.parse_args(argv)
    try:
        text = render(args)
    except RenderError as exc:
        print(f"render-check: the chart does not render: {exc}", file=sys.stderr)
        return 1
    return check(list(objects(text)))


if __name__ == "__main__":
    sys.exit(main())
