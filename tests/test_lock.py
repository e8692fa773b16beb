"""The lock: pyproject.toml's ranges, uv.lock and the exports in requirements/ agree, and the
venv running this suite holds exactly what the lock says (`pip freeze` equals the lock)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"
EXPORTS = ("bootstrap", "runtime", "build", "test")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins(name: str, *, here_only: bool = False) -> dict[str, str]:
    """An export's `name==version` lines (markers evaluated for this interpreter if asked)."""
    env = default_environment()
    found: dict[str, str] = {}
    for line in (ROOT / "requirements" / f"{name}.txt").read_text().splitlines():
        if not line or not line[0].isalnum():
            continue
        req = Requirement(line.rstrip(" \\"))
        if here_only and req.marker is not None and not req.marker.evaluate(env):
            continue
        (spec,) = req.specifier
        assert spec.operator == "==", line
        found[canonicalize_name(req.name)] = spec.version
    return found


def test_the_lock_matches_pyproject() -> None:
    # uv answers from the lock alone when it matches (no resolution, no index); a range in
    # pyproject.toml the lock no longer satisfies makes it resolve again, and fail.
    result = subprocess.run(
        [str(UV), "lock", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"run `make lock`:\n{result.stderr}"


@pytest.mark.parametrize("name", EXPORTS)
def test_each_export_is_what_the_lock_exports(name: str) -> None:
    path = ROOT / "requirements" / f"{name}.txt"
    header = path.read_text().splitlines()[1]
    command = shlex.split(header.lstrip("# "))
    assert command[:2] == ["uv", "export"] and "--frozen" in command, header
    out = command.index("-o")
    del command[out : out + 2]  # to standard output
    result = subprocess.run(
        [str(UV), *command[1:], "--quiet"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    body = lambda text: [line for line in text.splitlines() if not line.startswith("#")]  # noqa: E731
    assert body(result.stdout) == body(path.read_text()), f"run `make lock` ({name})"


def test_every_export_is_hash_pinned() -> None:
    for name in EXPORTS:
        text = (ROOT / "requirements" / f"{name}.txt").read_text()
        entries = re.findall(r"^[A-Za-z0-9][^\n]*?(?:\\\n\s+--hash=sha256:[0-9a-f]{64}\s*)+", text, re.M)
        assert len(entries) == len(pins(name)) > 0, name


def test_the_build_environment_is_in_the_lock() -> None:
    # pip's isolated build (the demo, the image) installs [build-system] requires pinned to
    # the build export; a requirement missing there would be resolved fresh that day.
    build = pins("build")
    for line in PYPROJECT["build-system"]["requires"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in build, f"{line}: not in requirements/build.txt"
        assert req.specifier.contains(build[name], prereleases=True), (line, build[name])


def test_runtime_exports_nest() -> None:
    # One resolution: the demo's runtime venv and the test venv pin the same versions.
    runtime, build, test = pins("runtime"), pins("build"), pins("test")
    assert runtime.items() <= build.items() <= test.items()
    assert pins("bootstrap").items() <= build.items()
    assert not {"pytest", "mypy", "helm-python-sdk"} & runtime.keys(), "runtime stays lean"


def test_this_venv_holds_exactly_the_lock() -> None:
    # `pip freeze --all`, read through importlib.metadata: every distribution installed
    # here is the test export's pin for this interpreter, and nothing else is (the project
    # itself aside).
    if not (sys.prefix != sys.base_prefix and (Path(sys.prefix) / ".installed").exists()):
        pytest.skip("not the Makefile's venv")
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
    }
    installed.pop("clerk-auth-proxy")
    assert installed == pins("test", here_only=True)
