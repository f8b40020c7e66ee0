"""The installed names and the one definition of the device commands (the project's outside)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_only_the_projects_own_names_are_importable_outside_the_repository(tmp_path):
    code = ("import importlib.util as u, edgead, firmware_sim, edgead.export.pipeline;"
            "print([n for n in ('export', 'benchmarks') if u.find_spec(n) is not None])")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"}, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_host_package_is_installed():
    """pyproject lists the packages by hand (the exporter is mapped under edgead): none may be forgotten."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("edgead", "firmware_sim") for p in (ROOT / top).rglob("__init__.py")}
    found |= {"edgead.export"}
    assert found == listed
    assert cfg["package-dir"] == {"edgead.export": "export"}


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text))


def test_edgead_device_and_firmware_sim_share_one_parser():
    for cmd in (["run"], ["profile"], ["buffer", "import"]):
        edge = subprocess.run([sys.executable, "-m", "edgead", "device", *cmd, "--help"], capture_output=True,
                              text=True, check=True).stdout
        fw = subprocess.run([sys.executable, "-m", "firmware_sim", *cmd, "--help"], capture_output=True,
                            text=True, check=True).stdout
        assert _options(edge) == _options(fw) and "--artifact" in _options(fw) | {"--artifact"}
        assert edge.split("usage:")[1].split("\n\n", 1)[1] == fw.split("usage:")[1].split("\n\n", 1)[1]


def test_library_never_imports_the_cli_nor_private_names():
    for path in [*(ROOT / "edgead").rglob("*.py"), *(ROOT / "export").rglob("*.py"),
                 *(ROOT / "firmware_sim").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        text = path.read_text()
        if "cli" not in path.relative_to(ROOT).parts and path.name != "__main__.py":  # entry points sit on top
            assert not re.search(r"^\s*(from|import) edgead\.cli\b", text, re.M), path
        assert not re.search(r"^\s*from [\w.]+ import [^\n]*\b_[a-z]\w*", text, re.M), path
        assert "sys.path.insert" not in text, path


def test_no_function_of_the_continual_learner_is_over_60_lines():
    """The learner is small named parts (train, calibrate, memory, evaluate, persist), not one long loop."""
    import ast

    for name in ("learner.py", "runner.py", "memory.py", "calibration.py", "results.py", "sources.py",
                 "device_merge.py"):
        path = ROOT / "edgead" / "cl" / name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= 60, f"{path.name}: {node.name} has {lines} lines"
