"""One tiny real export shared by the Edge TPU, bundle and profile tests: the session's tiny run (tests/conftest.py,
PaSTe-MCUNet trained 1 epoch on 64 px synthetic 'nut') exported as ``--format edgetpu,onnx-int8`` with a
stand-in ``edgetpu_compiler`` on PATH.

The real compiler runs on x86-64 Debian/Ubuntu from Coral's apt repository and cannot be installed here; the
stand-in writes what the compiler writes (``<stem>_edgetpu.tflite``, a copy of its input, and a ``.log``), so
the plumbing around it (export, manifest, bundle, device) is what these tests check. It also appends each call's
arguments to calls.txt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_run

STAND_IN = f"""#!{sys.executable}
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
here = Path(__file__).resolve().parent
with open(here / "calls.txt", "a") as f:
    f.write(" ".join(args) + "\\n")
if args == ["--version"]:
    print("Edge TPU Compiler version stand-in")
    sys.exit(0)
out = Path(args[args.index("-o") + 1]) if "-o" in args else Path.cwd()
for m in (Path(a) for a in args if a.endswith(".tflite")):
    stem = m.name[: -len(".tflite")]
    shutil.copy(m, out / f"{{stem}}_edgetpu.tflite")
    (out / f"{{stem}}_edgetpu.log").write_text(f"stand-in compiler: copied {{m.name}}\\n")
"""


def write_stand_in(folder: Path) -> Path:
    """An executable ``edgetpu_compiler`` in ``folder`` (put the folder on PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "edgetpu_compiler"
    path.write_text(STAND_IN)
    path.chmod(0o755)
    return path


def edgetpu_artifact(tmp_path_factory) -> dict:
    """{'run', 'art', 'data', 'bin'}: the run, its edgetpu + onnx-int8 export (built once per session), the
    stand-in compiler's folder."""
    base = tmp_path_factory.getbasetemp() / "edgetpu-artifact"
    art, tools = base / "art", base / "bin"
    tiny = tiny_run(tmp_path_factory)
    if not (art / "manifest.json").is_file():
        run = tiny["run"]
        write_stand_in(tools)
        from edgead.export.pipeline import ExportOptions, export_run

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PATH", f"{tools}{os.pathsep}{os.environ.get('PATH', '')}")
            export_run(run, art, ExportOptions(formats=["edgetpu", "onnx-int8"], calibration=8, allow_drift=True))
    return {"run": tiny["run"], "art": art, "data": tiny["data"], "bin": tools}
