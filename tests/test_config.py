"""Config: parsing units, env substitution, secrets, and errors that name file, key and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.config.load import (
    ConfigError,
    build_config,
    load_config,
    parse_duration,
    parse_size,
    substitute_env,
    validate_glob,
)
from tests.support import config_dict

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"CLERK_SECRET_KEY": "sk_live_example", "CLERK_MACHINE_SECRET_KEY": "ak_example"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), (1.5, 1.5), ("30", 30.0), ("30s", 30.0), ("250ms", 0.25), ("2m", 120.0),
     ("1h", 3600.0), ("1d", 86400.0), (" 5 s ", 5.0), ("0", 0.0)],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "-1", -1, True, "1y", "", None, [1]])
def test_bad_durations(value: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [(1024, 1024), ("1024", 1024), ("1KB", 1000), ("1KiB", 1024), ("10MB", 10_000_000),
     ("10MiB", 10 * 1024 * 1024), ("1g", 10**9), ("1GiB", 1024**3), ("512b", 512), ("0", 0)],
)
def test_sizes(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["ten", "1.5.5MB", "-5", -5, True, "5 XB"])
def test_bad_sizes(value: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_size(value)


@pytest.mark.parametrize(
    ("text", "env", "out", "missing"),
    [
        ("${A}", {"A": "1"}, "1", []),
        ("x${A}y", {"A": "1"}, "x1y", []),
        ("${A:-d}", {}, "d", []),
        ("${A:-d}", {"A": ""}, "d", []),
        ("${A:-}", {}, "", []),
        ("${A}", {}, "", ["A"]),
        ("${A}", {"A": ""}, "", []),
        ("$A ${B} ${C:-c}", {"B": "b"}, "$A b c", []),
        ("${A:-http://h:1/p}", {}, "http://h:1/p", []),
    ],
)
def test_env_substitution(text: str, env: dict[str, str], out: str, missing: list[str]) -> None:
    assert substitute_env(text, env) == (out, missing)


@pytest.mark.parametrize("glob", ["/", "/a/**", "/a/*/b", "/socket.io/**", "/a/b.json"])
def test_good_globs(glob: str) -> None:
    validate_glob(glob)


@pytest.mark.parametrize("glob", ["a/b", "/a**/b", "/a/***", "/a b", "/a/\x00"])
def test_bad_globs(glob: str) -> None:
    with pytest.raises(ValueError):
        validate_glob(glob)


# The key of each shipped config's instance: production and staging share production's.
KEY_OF = {
    "production": "sk_live_example",
    "staging": "sk_live_example",
    "test": "sk_test_example",
    "local": "sk_test_example",
}


def shipped_env(name: str, tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / f"{name}_secret_key"
    key_file.write_text(KEY_OF[name] + "\n")
    return {"CLERK_SECRET_KEY": KEY_OF[name], "CLERK_MACHINE_SECRET_KEY": "ak_example",
            "CLERK_SECRET_KEY_FILE": str(key_file)}


@pytest.mark.parametrize("name", ["production", "staging", "test", "local"])
def test_shipped_configs_validate(name: str, tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / f"{name}.yaml", env=shipped_env(name, tmp_path))
    assert cfg.environment == name
    assert cfg.clerk.secret_key.startswith(("sk_live_", "sk_test_"))
    assert [r.name for r in cfg.routes][:2] == ["health", "matches"]
    assert cfg.default_route.auth == "required"
    assert cfg.upstream.read_timeout > 45  # Socket.IO pingInterval + pingTimeout


def test_environments_name_their_clerk_instances(tmp_path: Path) -> None:
    """Staging runs against the production instance (README, docs/deploy.md, its budget
    comment): its config says so, by name and by kind; test and local have their own."""
    clerk = {
        n: load_config(ROOT / "config" / f"{n}.yaml", env=shipped_env(n, tmp_path)).clerk
        for n in ("production", "staging", "test", "local")
    }
    assert clerk["staging"].instance == clerk["production"].instance == "scores-production"
    assert clerk["staging"].instance_type == clerk["production"].instance_type == "production"
    assert clerk["test"].instance_type == clerk["local"].instance_type == "development"
    assert len({c.instance for c in clerk.values()}) == 3


def _issues(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        build_config(raw, file="bad.yaml")
    return [str(i) for i in err.value.issues]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"bogus": 1}, "bad.yaml: bogus: unknown key"),
        ({"listen": {"port": 70000}}, "bad.yaml: listen.port: port out of range 0-65535: 70000"),
        ({"listen": {"port": "http"}}, "bad.yaml: listen.port: expected an integer"),
        ({"upstream": {"url": "ftp://x"}}, "bad.yaml: upstream.url: bad URL 'ftp://x'"),
        ({"upstream": {"url": "http://"}}, "bad.yaml: upstream.url: bad URL"),
        ({"upstream": {"read_timeout": "soon"}}, "bad.yaml: upstream.read_timeout: expected a duration"),
        ({"upstream": {"max_body_size": "big"}}, "bad.yaml: upstream.max_body_size: expected a size"),
        ({"clerk": {"secret_key": ""}}, "bad.yaml: clerk.secret_key: missing secret"),
        ({"clerk": {"secret_key": "pk_test_x"}}, "bad.yaml: clerk.secret_key: expected a Clerk instance secret key"),
        ({"clerk": {"machine_secret_key": "sk_test_x"}}, "bad.yaml: clerk.machine_secret_key: expected a Clerk machine secret key"),
        ({"clerk": {"api_url": "not a url"}}, "bad.yaml: clerk.api_url: bad URL"),
        ({"cache": {"max_entries": 0}}, "bad.yaml: cache.max_entries: must be at least 1"),
        ({"cache": {"ttl": 5}}, "bad.yaml: cache.ttl: unknown key"),
        ({"routes": [{"name": "x", "path": "no-slash"}]}, "bad.yaml: routes[0].path: path glob must start with '/'"),
        ({"routes": [{"name": "x", "path": "/a**"}]}, "bad.yaml: routes[0].path: '**' must be a whole path segment"),
        ({"routes": [{"name": "x"}]}, "bad.yaml: routes[0].path: is required"),
        ({"routes": [{"path": "/a", "auth": "maybe"}]}, "bad.yaml: routes[0].auth: must be public, optional or required"),
        ({"routes": [{"path": "/a", "methods": ["FETCH"]}]}, "bad.yaml: routes[0].methods: unknown HTTP method(s): FETCH"),
        ({"routes": [{"path": "/a", "principal_types": ["robot"]}]}, "bad.yaml: routes[0].principal_types: unknown principal type(s) robot"),
        ({"routes": [{"path": "/a", "auth": "public", "scopes": ["s"]}]}, "bad.yaml: routes[0]: a public route cannot require scopes"),
        ({"routes": [{"name": "a", "path": "/a"}, {"name": "a", "path": "/b"}]}, "bad.yaml: routes[1].name: duplicate route name 'a'"),
        ({"routes": "all"}, "bad.yaml: routes: expected a list"),
        ({"default_route": {"path": "/x"}}, "bad.yaml: default_route.path: unknown key"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "bad.yaml: trusted_proxies[0]: not an IP address or CIDR network"),
        ({"forward_authorization": "sometimes"}, "bad.yaml: forward_authorization: expected true or false"),
        ({"logging": {"level": "LOUD"}}, "bad.yaml: logging.level: must be DEBUG"),
        ({"headers": {"prefix": "X Auth"}}, "bad.yaml: headers.prefix: must be a header-name prefix"),
        ({"verification_budget": {"per_ip": {"rate": 0}}}, "bad.yaml: verification_budget.per_ip.rate: must be greater than 0"),
        ({"verification_budget": {"per_ip": {"ipv4_prefix": 33}}}, "bad.yaml: verification_budget.per_ip.ipv4_prefix: must be a prefix length from 1 to 32"),
        ({"verification_budget": {"per_ip": {"ipv6_prefix": 0}}}, "bad.yaml: verification_budget.per_ip.ipv6_prefix: must be a prefix length from 1 to 128"),
        ({"verification_budget": {"global": {"ipv4_prefix": 24}}}, "bad.yaml: verification_budget.global.ipv4_prefix: unknown key"),
        ({"verification_budget": {"reserved_for_known": 1}}, "bad.yaml: verification_budget.reserved_for_known: must be at least 0 and less than 1"),
        ({"cache": {"refresh_ahead": -0.1}}, "bad.yaml: cache.refresh_ahead: must be at least 0 and less than 1"),
        ({"cache": {"refresh_ahead": "soon"}}, "bad.yaml: cache.refresh_ahead: expected a number"),
        ({"clerk": {"miss_deadline": 0}}, "bad.yaml: clerk.miss_deadline: must be greater than 0"),
        (
            {"clerk": {"miss_deadline": "200ms"}, "cache": {"shared": {"url": "redis://r:6379", "timeout": "200ms"}}},
            "bad.yaml: cache.shared.timeout: must be under clerk.miss_deadline (0.2 s)",
        ),
        ({"clerk": {"backoff_initial": "1s", "backoff_max": "500ms"}}, "bad.yaml: clerk.backoff_max: must not be less than clerk.backoff_initial"),
        ({"admin": {"port": 8080}, "listen": {"port": 8080}}, "bad.yaml: admin.port: must differ from listen.port"),
        (
            {"admin": {"port": 9090}, "revocation": {"secret": "a-revocation-secret-0123", "listen": {"port": 9090}}},
            "bad.yaml: revocation.listen.port: must differ from listen.port and admin.port",
        ),
        ({"revocation": {"listen": {"bind": "x"}}}, "bad.yaml: revocation.listen.bind"),
    ],
)
def test_each_bad_key_is_named(patch: dict[str, Any], expected: str) -> None:
    raw = config_dict("http://127.0.0.1:3000")
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    issues = _issues(raw)
    assert any(i.startswith(expected) for i in issues), issues


def test_all_problems_are_reported_at_once() -> None:
    raw = config_dict("ftp://x", listen={"port": -1}, bogus=True)
    raw["clerk"] = {"secret_key": ""}
    issues = _issues(raw)
    keys = {i.split(": ")[1] for i in issues}
    assert {"upstream.url", "listen.port", "bogus", "clerk.secret_key"} <= keys


def test_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk_test_fromfile\n")
    raw = config_dict()
    raw["clerk"] = {"secret_key_file": str(secret)}
    assert build_config(raw, file="f.yaml").clerk.secret_key == "sk_test_fromfile"

    raw["clerk"] = {"secret_key_file": str(tmp_path / "absent")}
    assert any("clerk.secret_key_file: cannot read secret file" in i for i in _issues(raw))

    raw["clerk"] = {"secret_key_file": str(secret), "secret_key": "sk_test_x"}
    assert any("set either secret_key or secret_key_file" in i for i in _issues(raw))


def test_secret_never_in_repr(tmp_path: Path) -> None:
    cfg = build_config(config_dict(), file="f.yaml")
    assert "sk_test_unit" not in repr(cfg)


def test_load_reports_unset_variables_with_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "upstream:\n  url: http://127.0.0.1:3000\n"
        "clerk:\n  secret_key: ${NOT_SET_ANYWHERE}\n"
        "# ${IN_A_COMMENT} is ignored\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    text = [str(i) for i in err.value.issues]
    assert f"{path}: line 4: environment variable NOT_SET_ANYWHERE is not set (missing secret?)" in text
    assert any("clerk.secret_key: missing secret" in i for i in text)
    assert not any("IN_A_COMMENT" in i for i in text)


def test_load_reports_yaml_syntax_with_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream:\n  url: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert "invalid YAML" in str(err.value)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.process.cli", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False,
    )


def test_check_config_cli_ok_and_exit_2(tmp_path: Path) -> None:
    import os

    for name in ("production", "staging", "test", "local"):
        env = {**os.environ, **shipped_env(name, tmp_path)}
        done = _cli("check-config", "--config", f"config/{name}.yaml", env=env)
        assert done.returncode == 0, done.stderr
        assert "OK" in done.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: {port: 99999}\nupstream: {url: 'gopher://x'}\nclerk: {secret_key: ''}\nwat: 1\n")
    done = _cli("check-config", "--config", str(bad), env=env)
    assert done.returncode == 2
    assert "4 problem(s)" in done.stderr
    for key in ("listen.port", "upstream.url", "clerk.secret_key", "wat"):
        assert f"{bad}: {key}:" in done.stderr


def test_verification_keys_and_their_defaults() -> None:
    default = build_config(config_dict("http://127.0.0.1:3000"), file="t.yaml")
    assert (default.clerk.miss_deadline, default.clerk.backoff_initial, default.clerk.backoff_max) == (
        1.0,
        0.1,
        10.0,
    )
    assert default.cache.refresh_ahead == 0.2
    vb = default.verification_budget
    assert (vb.ipv4_prefix, vb.ipv6_prefix, vb.reserved_for_known) == (32, 64, 0.25)
    raw = config_dict(
        "http://127.0.0.1:3000",
        clerk={"api_url": "http://127.0.0.1:1", "secret_key": "sk_test_unit", "miss_deadline": "250ms",
               "backoff_initial": "50ms", "backoff_max": "2m"},
        cache={"refresh_ahead": 0.3},
        verification_budget={"reserved_for_known": 0.5, "per_ip": {"rate": 2, "burst": 4, "ipv4_prefix": 24,
                                                                   "ipv6_prefix": 56}},
    )
    cfg = build_config(raw, file="t.yaml")
    assert (cfg.clerk.miss_deadline, cfg.clerk.backoff_initial, cfg.clerk.backoff_max) == (0.25, 0.05, 120.0)
    assert cfg.cache.refresh_ahead == 0.3
    vb = cfg.verification_budget
    assert (vb.ipv4_prefix, vb.ipv6_prefix, vb.reserved_for_known, vb.per_ip.burst) == (24, 56, 0.5, 4)


def test_a_route_asking_m2m_tokens_for_a_scope_they_never_carry_is_warned_about() -> None:
    from proxy.config.load import build_config
    from tests.support import config_dict

    raw = config_dict("http://127.0.0.1:3000")
    raw["routes"] = [
        {"name": "admin", "path": "/admin/**", "scopes": ["scores:admin"]},
        {"name": "oauth-admin", "path": "/oa/**", "scopes": ["scores:admin"],
         "principal_types": ["oauth", "api_key"]},
        {"name": "machines", "path": "/m/**", "scopes": ["mch_api"]},
    ]
    cfg = build_config(raw, file="c.yaml")
    keys = [key for key, _ in cfg.warnings]
    assert keys == ["routes[0].scopes"]
    assert "scores:admin is not a machine id" in dict(cfg.warnings)["routes[0].scopes"]
