"""The lock: pyproject.toml's ranges, uv.lock and the exports in requirements/ agree, and the
venv running this suite holds exactly what the lock says (`pip freeze` equals the lock)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import sysconfig
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
    # site-packages itself, not sys.path: importing setuptools (test_build) puts its own
    # vendored distributions on sys.path.
    site = sysconfig.get_paths()["purelib"]
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions(path=[site])
    }
    installed.pop("clerk-auth-proxy")
    assert installed == pins("test", here_only=True)


def _wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal valid wheel: what a release published upstream after the lock looks like."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for member, data in files.items():
            whl.writestr(member, data)
    return path


def _dry_run(*args: str, check: bool) -> subprocess.CompletedProcess[str]:
    """What pip would install, as its JSON report, installing nothing."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    return subprocess.run(
        [*command, "--quiet", "--report", "-", "--no-deps", *args],
        capture_output=True, text=True, check=check, timeout=300,
    )


def test_a_newer_release_on_the_index_changes_nothing(tmp_path: Path) -> None:
    # Newer releases of three locked packages, offered beside the index (as the next
    # redis-py was the day a fresh clone broke): the locked install takes the locked ones.
    for name in ("redis", "cachetools", "pyjwt"):
        _wheel(tmp_path, name, "99.0.0")
    unlocked = _dry_run("--no-index", "--find-links", str(tmp_path), "redis", check=True)
    assert '"version": "99.0.0"' in unlocked.stdout, "the stand-in release is installable"
    runtime = str(ROOT / "requirements" / "runtime.txt")
    result = _dry_run("--require-hashes", "--find-links", str(tmp_path), "-r", runtime, check=False)
    assert result.returncode == 0, result.stderr
    chosen = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(result.stdout)["install"]
    }
    assert chosen == pins("runtime", here_only=True)
    assert "99.0.0" not in chosen.values()
