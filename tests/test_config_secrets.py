"""The operator's config: errors that name the variable that fixes them, Clerk keys never
written in the file and of the instance's kind, a warning for an upstream off loopback,
and every `${VAR}` of the shipped configs documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.config.load import ConfigError, load_config
from proxy.config.sources import substitute

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "config").glob("*.yaml"))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.process.cli", *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, timeout=60,
        check=False,
    )


def _problems(path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env)
    return [str(i) for i in err.value.issues]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("upstream: {url: 'http://127.0.0.1:3000'}\n" + text)
    return path


def test_a_missing_secret_file_names_the_variable_the_config_reads() -> None:
    # What an operator who set CLERK_SECRET_KEY (the usual name) sees with production.yaml.
    done = _cli(
        "check-config", "--config", "config/production.yaml",
        env={"CLERK_SECRET_KEY": "sk_live_example", "CLERK_SECRET_KEY_FILE": "/nonexistent/key"},
    )
    assert done.returncode == 2
    assert (
        "config/production.yaml: clerk.secret_key_file: cannot read secret file "
        "'/nonexistent/key': No such file or directory; set CLERK_SECRET_KEY_FILE to the path "
        "of a file that holds it"
    ) in done.stderr
    assert "sk_live_example" not in done.stderr


def test_a_missing_secret_names_its_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, "clerk: {secret_key: '${MY_CLERK_KEY:-}'}\n")
    assert f"{path}: clerk.secret_key: missing secret: set MY_CLERK_KEY (this file reads secret_key from it)" in _problems(path, {})
    path = _write(tmp_path, "clerk: {secret_key_file: '${MY_KEY_FILE:-}'}\n")
    assert any("missing secret: set it via an environment variable or secret_key_file" in p for p in _problems(path, {}))
    path = _write(tmp_path, "clerk: {secret_key_file: /nonexistent/key}\n")
    assert any(p.endswith("; mount the key there or change clerk.secret_key_file") for p in _problems(path, {}))


@pytest.mark.parametrize(
    "clerk",
    [
        "{secret_key: sk_test_abc}",
        "{secret_key: 'sk_live_abc'}",
        "{secret_key: '${CLERK_SECRET_KEY:-sk_test_abc}'}",
        "{secret_key: '${CLERK_SECRET_KEY}', machine_secret_key: ak_abc}",
        "{secret_key: '${CLERK_SECRET_KEY}', machine_secret_key: '${M:-ak_abc}'}",
    ],
)
def test_a_key_written_in_the_file_is_refused(tmp_path: Path, clerk: str) -> None:
    path = _write(tmp_path, f"clerk: {clerk}\n")
    # Even when the environment provides a key: the file still holds one.
    problems = _problems(path, {"CLERK_SECRET_KEY": "sk_test_env"})
    assert any("key is written in the config file" in p for p in problems), problems
    assert not any("abc" in p for p in problems)  # never the key itself


def test_allow_inline_secrets_admits_a_development_key_only(tmp_path: Path) -> None:
    clerk = "clerk: {secret_key: sk_test_abc, machine_secret_key: ak_abc}\n"
    assert load_config(_write(tmp_path, "allow_inline_secrets: true\n" + clerk), env={})
    path = _write(tmp_path, "allow_inline_secrets: true\nclerk: {secret_key: sk_live_abc}\n")
    assert any("an sk_live_ key is written in the config file" in p for p in _problems(path, {}))
    path = _write(tmp_path, "environment: production\nallow_inline_secrets: true\n" + clerk)
    problems = _problems(path, {})
    assert f"{path}: allow_inline_secrets: only for local development: this config's Clerk instance is a production one (environment: production)" in problems


@pytest.mark.parametrize(
    ("head", "key", "expected"),
    [
        ("environment: production\n", "sk_test_x", "an sk_test_ key (read from K) belongs to a development instance, but this config's Clerk instance is a production one (environment: production)"),
        ("environment: test\n", "sk_live_x", "an sk_live_ key (read from K) belongs to a production instance, but this config's Clerk instance is a development one (environment: test)"),
        ("environment: staging\ninstance_type: production\n", "sk_test_x", "(clerk.instance_type: production)"),
        ("environment: local\n", "sk_live_x", "this config's Clerk instance is a development one (environment: local)"),
    ],
)
def test_a_key_of_the_other_instance_kind_is_an_error(tmp_path: Path, head: str, key: str, expected: str) -> None:
    top, _, clerk = head.partition("instance_type")
    clerk_extra = f", instance_type{clerk.strip()}" if clerk else ""
    path = _write(tmp_path, top + f"clerk: {{secret_key: '${{K}}'{clerk_extra}}}\n")
    problems = _problems(path, {"K": key})
    assert any(expected in p for p in problems), problems


def test_keys_of_the_right_kind_load(tmp_path: Path) -> None:
    for environment, key in (("production", "sk_live_x"), ("test", "sk_test_x"), ("staging", "sk_test_x")):
        path = _write(tmp_path, f"environment: {environment}\nclerk: {{secret_key: '${{K}}'}}\n")
        assert load_config(path, env={"K": key}).clerk.secret_key == key
    path = _write(tmp_path, "clerk: {secret_key: '${K}', instance_type: staging}\n")
    assert any("clerk.instance_type: must be production or development" in p for p in _problems(path, {"K": "sk_test_x"}))


def test_an_upstream_off_loopback_is_a_warning_that_says_why(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream: {url: 'http://10.1.2.3:3000'}\nclerk: {secret_key: '${K}'}\n")
    done = _cli("check-config", "--config", str(path), env={"K": "sk_test_x"})
    assert done.returncode == 0, done.stderr
    assert (
        f"warning: {path}: upstream.url: 10.1.2.3 is not a loopback address: the proxy is a "
        "sidecar for an API that listens on 127.0.0.1 only; an API reachable from the network "
        "can be called around the proxy"
    ) in done.stderr
    for url in ("http://127.0.0.1:3000", "http://localhost:3000", "http://[::1]:3000"):
        path.write_text(f"upstream: {{url: '{url}'}}\nclerk: {{secret_key: '${{K}}'}}\n")
        assert load_config(path, env={"K": "sk_test_x"}).warnings == ()


def _variables(path: Path) -> set[str]:
    refs = substitute(path.read_text(), {}).parse()[1]
    return {name for source in refs.values() for name in source.variables}


def test_every_variable_of_every_shipped_config_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    section = doc.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    for path in SHIPPED:
        assert _variables(path), path
        row = re.search(rf"^\| `config/{path.name}` \|(.*)$", section, re.MULTILINE)
        assert row is not None, f"docs/configuration.md lists no variables of {path.name}"
        listed = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.group(1)))
        assert listed == _variables(path), (path.name, listed ^ _variables(path))
        for name in _variables(path):
            assert re.search(rf"^\| `{name}` \|", section, re.MULTILINE), f"{name} has no row"
    readme = (ROOT / "README.md").read_text()
    for name in _variables(ROOT / "config" / "local.yaml"):
        assert f"`{name}`" in readme, f"README does not mention {name} (make demo's overrides)"


def test_the_source_map_names_the_variables_of_each_key() -> None:
    text = "listen: {host: '${H:-0.0.0.0}', port: ${P:-8080}}\nclerk:\n  key: x${A}y${B:-}\n  empty: ${E:-}\n"
    refs = substitute(text, {"A": "1"}).parse()[1]
    assert refs["listen.host"].variables == ("H",) and refs["listen.port"].variables == ("P",)
    assert refs["clerk.key"].variables == ("A", "B") and refs["clerk.key"].written == "x${A}y${B:-}"
    assert refs["clerk.empty"].variables == ("E",)
    assert yaml.safe_load(substitute(text, {"A": "1"}).text)["clerk"]["key"] == "x1y"
