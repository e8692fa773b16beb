"""The config's content hash and changed keys (config.fingerprint), on loaded configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from proxy.config.fingerprint import changed_keys, digest
from proxy.config.load import load_config
from tests.support import config_dict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLERK_SECRET_KEY", "sk_test_one")
    path = tmp_path / "a.yaml"
    path.write_text((ROOT / "config" / "local.yaml").read_text())
    return path


def test_what_the_config_says_is_hashed_not_where_or_how(tmp_path: Path) -> None:
    raw = {**config_dict("http://127.0.0.1:3000"), "allow_inline_secrets": True}
    one, other = tmp_path / "one.yaml", tmp_path / "elsewhere" / "other.yaml"
    other.parent.mkdir()
    one.write_text(yaml.safe_dump(raw, sort_keys=False))
    other.write_text("# reordered, with comments\n\n" + yaml.safe_dump(raw, sort_keys=True))
    assert one.read_text() != other.read_text()
    assert digest(load_config(one)) == digest(load_config(other))


def test_a_changed_key_changes_the_hash_and_is_named(local: Path) -> None:
    before = load_config(local)
    route = dataclasses.replace(before.routes[0], scopes=("scores:write",))
    after = dataclasses.replace(before, routes=(route, *before.routes[1:]))
    assert digest(before) != digest(after)
    assert changed_keys(before, after) == ["routes[0].scopes[0]"]


def test_secrets_never_enter_the_hash_but_a_rotation_is_named(
    local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = load_config(local)
    monkeypatch.setenv("CLERK_SECRET_KEY", "sk_test_two")
    after = load_config(local)
    assert digest(before) == digest(after)
    assert changed_keys(before, after) == ["clerk.secret_key"]
    assert changed_keys(before, before) == []
