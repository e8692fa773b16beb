"""The house rules of proxy/'s layout: layer packages that say what they may import, an
import contract that fails on a wrong-way import, no import cycles, and the architecture
table that lists every module. How big a module may grow is a review rule
(docs/architecture.md), not a test."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROXY = ROOT / "proxy"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _packages() -> list[Path]:
    return sorted(p.parent for p in PROXY.rglob("__init__.py") if p.parent != PROXY)


def test_every_layer_package_says_what_it_holds_and_may_import() -> None:
    assert _packages(), "proxy/ has no sub-packages"
    for package in _packages():
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc, f"{package.relative_to(ROOT)}/__init__.py has no docstring"
        assert "May import" in doc, f"{package.relative_to(ROOT)}: the docstring names no imports"


def test_no_module_lives_flat_in_the_root_package() -> None:
    assert sorted(p.name for p in PROXY.glob("*.py")) == ["__init__.py"]


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("proxy", include_external_packages=False)
    modules = sorted(graph.modules)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.find_modules_directly_imported_by(module)):
            if dep == "proxy":  # the root package's __version__ and compiled()
                continue
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in modules:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of the sources and the contract, to break on purpose."""
    shutil.copytree(PROXY, tmp_path / "proxy", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contract_holds(scratch: Path) -> None:
    done = _lint_imports(scratch)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        # A lower layer reaching up: the cache importing the request path.
        ("auth/cache/store.py", "import proxy.request.app", "Layers"),
        # Siblings that must stay independent: the relay importing verification.
        ("http/forward.py", "import proxy.auth.verifier", "Layers"),
        # The request path importing the emulator.
        ("request/app.py", "import proxy.emulator.state", "Only the process"),
        # The emulator sharing the proxy's understanding of Clerk.
        ("emulator/state.py", "import proxy.auth.tokens", "emulator stands apart"),
    ],
)
def test_a_wrong_way_import_fails_the_contract(
    scratch: Path, module: str, wrong_import: str, contract: str
) -> None:
    target = scratch / "proxy" / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # noqa\n")
    done = _lint_imports(scratch)
    assert done.returncode != 0
    broken = [line for line in done.stdout.splitlines() if line.endswith("BROKEN")]
    assert len(broken) == 1 and contract in broken[0], done.stdout


def test_the_architecture_table_lists_every_module_under_its_package() -> None:
    """docs/architecture.md's table (`| package | module | idea |`) is the newcomer's map:
    exactly the modules that exist, each under the package that holds it."""
    listed: set[str] = set()
    package = ""
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        package = cells[0].strip("`") or package
        listed.add(f"{package}.{cells[1].split('`')[1]}")
    modules = {
        ".".join(p.relative_to(PROXY).with_suffix("").parts)
        for p in PROXY.rglob("*.py")
        if p.name != "__init__.py"
    }
    assert listed == modules
