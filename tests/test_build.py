"""What ships: the request path compiled by mypyc (setup.py), unless asked otherwise."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

import proxy
from proxy.fastpath import frontdoor
from proxy.http import headers, http1

ROOT = Path(__file__).resolve().parent.parent


def test_the_request_path_runs_compiled() -> None:
    if os.environ.get("CLERK_AUTH_PROXY_PURE") == "1":
        pytest.skip("CLERK_AUTH_PROXY_PURE=1: a pure-Python build was asked for")
    assert proxy.compiled(), "setup.py built no extensions (no compiler, or mypyc refused)"
    for module in (frontdoor, headers, http1):
        assert module.__file__ is not None and module.__file__.endswith(".so"), module.__name__


def _setup_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("setup_under_test", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not as __main__: setup() does not run
    return module


@pytest.mark.parametrize("required", [False, True])
def test_a_failed_compilation_fails_the_build_only_when_compiled_is_required(
    required: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The Dockerfile requires it: an image must not fall back to pure Python unannounced.
    setup = _setup_module()
    monkeypatch.setattr(setup, "COMPILED", ["proxy/no_such_module.py"])  # mypyc refuses
    monkeypatch.delenv("CLERK_AUTH_PROXY_PURE", raising=False)
    if required:
        monkeypatch.setenv("CLERK_AUTH_PROXY_REQUIRE_COMPILED", "1")
        with pytest.raises(SystemExit, match="REQUIRE_COMPILED=1, and mypyc failed"):
            setup.extensions()
    else:
        monkeypatch.delenv("CLERK_AUTH_PROXY_REQUIRE_COMPILED", raising=False)
        assert setup.extensions() == []
        assert "building pure Python" in capsys.readouterr().err


def test_the_image_build_requires_the_compiled_request_path() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    build_stage = dockerfile.split("FROM ${PYTHON_IMAGE}")[0]
    assert "CLERK_AUTH_PROXY_REQUIRE_COMPILED=1" in build_stage


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for the venv's python: `-m pip install` fails the way pip does when mypyc
# refuses, unless the pure build was asked for; `-P -c ...compiled()` says pure.
if [ "$1" = -m ]; then
    echo "$*" >> "$(dirname "$0")/../calls"
    if [ "${CLERK_AUTH_PROXY_PURE:-}" = 1 ]; then exit 0; fi
    echo "WARNING: Location 'file:///x' is ignored"
    echo "proxy/fastpath/frontdoor.py:12: error: Incompatible types in assignment  [assignment]"
    echo "SystemExit: clerk-auth-proxy: CLERK_AUTH_PROXY_REQUIRE_COMPILED=1, and mypyc failed"
    exit 1
fi
exit 1
"""


@pytest.mark.parametrize(
    ("on_failure", "pure", "code", "builds"),
    [("fail", "", 1, 1), ("pure", "", 0, 2), ("fail", "1", 0, 1)],
)
def test_a_mypyc_failure_is_printed_and_fails_make_test(
    tmp_path: Path, on_failure: str, pure: str, code: int, builds: int
) -> None:
    # scripts/compile.sh, which `make test` and `make demo` build through, with a venv whose
    # pip fails as a refused mypyc build does.
    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLERK_AUTH_PROXY_")}
    if pure:
        env["CLERK_AUTH_PROXY_PURE"] = pure
    result = subprocess.run(
        ["bash", "scripts/compile.sh", str(tmp_path), on_failure, "venv"],
        cwd=ROOT, capture_output=True, text=True, env=env, check=False,
    )
    assert result.returncode == code, result.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == builds
    if pure:
        assert "CLERK_AUTH_PROXY_PURE=1" in result.stderr and "asked for" in result.stderr
        return
    assert "mypyc could not compile the request path" in result.stderr
    assert "frontdoor.py:12: error: Incompatible types" in result.stderr
    assert "WARNING: Location" not in result.stderr
    if on_failure == "fail":
        assert "make test fails here" in result.stderr
    else:
        assert "PURE-PYTHON request path instead" in result.stderr
