"""`edgead export` writes and replaces folders by what they hold (issue 21, probe cases 37, 39, 40).

`export --run R --out R --force` used to replace the run (checkpoints, state) with the artifact; `--force` now
replaces only an artifact edgead wrote, never the run or the data it reads, and a killed export's
`.OUT.partial-*` folder is removed by the next export. The victims' files are compared byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from edgead.export.pipeline import ExportOptions, export_run

from edgead.cli import main
from edgead.errors import EdgeadError
from firmware_sim.outputs import MARKER, folder_kind
from tests.conftest import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)["run"]  # the session's 1-epoch 64 px run (tests/conftest.py), never changed


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _opts(**kw) -> ExportOptions:
    return ExportOptions(formats=["onnx"], calibration=8, allow_drift=True, **kw)


def test_export_over_its_own_run_is_refused(run_dir):
    before = _snapshot(run_dir)
    with pytest.raises(EdgeadError, match="is the input"):
        export_run(run_dir, run_dir, _opts(force=True))
    with pytest.raises(EdgeadError, match="contains the input"):
        export_run(run_dir, run_dir.parent, _opts(force=True))
    assert _snapshot(run_dir) == before


def test_cli_export_and_bundle_over_the_run_are_clear_errors(run_dir, tmp_path, capsys):
    before = _snapshot(run_dir)
    for args in (["--out", str(run_dir), "--force"],
                 ["--out", str(tmp_path / "art"), "--bundle", str(run_dir), "--force"]):
        with pytest.raises(SystemExit) as e:
            main(["export", "--run", str(run_dir), "--format", "onnx", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"{run_dir}: is the input {run_dir}" in err and "Traceback" not in err
    assert _snapshot(run_dir) == before and not (tmp_path / "art").exists()


def test_dotdot_out_and_a_users_folder_are_refused(run_dir, tmp_path):
    x = tmp_path / "x"
    x.mkdir()
    (x / "notes.txt").write_text("mine\n")
    with pytest.raises(EdgeadError, match="already exists and is not empty"):
        export_run(run_dir, x / "nosub" / "..", _opts())
    assert not (x / "nosub").exists()
    with pytest.raises(EdgeadError, match="replaces only an artifact folder"):
        export_run(run_dir, x, _opts(force=True))
    assert _snapshot(x) == {"notes.txt": b"mine\n"}


@pytest.mark.slow
def test_force_replaces_an_artifact_and_a_killed_exports_partial_is_removed(run_dir, tmp_path):
    art = tmp_path / "art"
    export_run(run_dir, art, _opts())
    assert folder_kind(art) == "artifact" and (art / MARKER).is_file()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    partial = tmp_path / f".art.partial-{dead}-k1lled00"  # what a SIGKILLed export leaves
    partial.mkdir()
    (partial / "full.onnx").write_bytes(os.urandom(64))
    (art / MARKER).unlink()  # an artifact exported before the marker: known by its manifest
    export_run(run_dir, art, _opts(force=True))
    assert not partial.exists() and (art / "manifest.json").is_file() and (art / MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art.")]
