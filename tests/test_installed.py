"""The project works installed, not only from the checkout (issue 22).

The full check installs the project non-editable into a fresh venv and runs the README's API block from a
folder outside the checkout (scripts/check_installed.sh, run by .ci/run): pytest cannot, because it runs from
the repository root where the top-level `export/` folder is importable as `export`. These fast checks catch
the same mistakes at their source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (3.10 has no TOML reader in the standard library)
ROOT = Path(__file__).resolve().parents[1]


def _py_files():
    for top in ("edgead", "export", "firmware_sim", "benchmarks", "tests", "scripts"):
        yield from (ROOT / top).rglob("*.py")


def test_the_exporter_is_imported_only_as_edgead_export():
    bad = []
    for path in _py_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "export"]
    assert not bad, f"`export` is installed as `edgead.export`; these imports fail outside the checkout: {bad}"


def test_every_package_with_code_is_installed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages, dirs = set(cfg["packages"]), cfg.get("package-dir", {})
    for pkg in packages:
        folder = ROOT / (dirs[pkg] if pkg in dirs else pkg.replace(".", "/"))
        assert (folder / "__init__.py").is_file(), f"{pkg}: {folder} is not a package"
    for init in [*(ROOT / "edgead").rglob("__init__.py"), *(ROOT / "firmware_sim").rglob("__init__.py"),
                 *(ROOT / "export").rglob("__init__.py")]:
        rel = init.parent.relative_to(ROOT).as_posix()
        name = "edgead.export" + rel[len("export"):].replace("/", ".") if rel.startswith("export") else \
            rel.replace("/", ".")
        assert name in packages, f"{rel}/ holds code but pyproject.toml does not install {name}"


def test_a_bare_install_has_a_working_cli():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("click") for d in deps), "`pip install .` must give `edgead --help` its click"
