"""Output folders are decided by what they hold, not by their path (issue 21, probe cases 37, 38, 40).

`firmware_sim bundle ART ART --force` used to delete the artifact's ONNX files, `bundle ART PARENT --force` the
whole parent (a run, notes, the source artifact), `bundle ART x/nosub/..` emptied `x` without --force. Each test
snapshots the victim's files and checks they are byte-identical after the refused command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.bundle import make_bundle
from firmware_sim.errors import UserError
from firmware_sim.manifest import write_manifest
from firmware_sim.outputs import MARKER, clean_partials, folder_kind, partial_prefix

ROOT = Path(__file__).resolve().parents[2]


def _artifact(folder: Path) -> Path:
    """A small artifact as `edgead export` lays it out: graphs of two formats, fidelity.json, manifest.json."""
    folder.mkdir(parents=True)
    quant = {"scale": [1.0], "zero_point": [-128], "axis": None}
    graph = {"inputs": [{"name": "image", "shape": [1, 16, 16, 3], "dtype": "int8", "layout": "NHWC",
                         "quantization": quant}],
             "outputs": [{"name": "latent", "shape": [1, 2, 2, 4], "dtype": "int8", "layout": "NHWC",
                          "quantization": quant}]}
    (folder / "trunk.int8.tflite").write_bytes(os.urandom(300))
    (folder / "trunk.onnx").write_bytes(os.urandom(500))
    (folder / "fidelity.json").write_text("{}")
    data = {"model": "paste", "backbone": "mcunet-in3", "levels": [6, 10, 14],
            "input": {"image_size": 16, "preprocess": {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}},
            "formats": {"tflite-int8": {"graphs": {"trunk": {**graph, "file": "trunk.int8.tflite"}}},
                        "onnx": {"graphs": {"trunk": {**graph, "file": "trunk.onnx",
                                                      "inputs": [{**graph["inputs"][0], "dtype": "float32",
                                                                  "quantization": None}]}}}},
            "calibration": {"threshold": 0.5}, "fidelity": {"file": "fidelity.json"}, "tools": {"numpy": "2"}}
    write_manifest(folder, data, ["trunk.int8.tflite", "trunk.onnx", "fidelity.json"])
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def parent(tmp_path) -> Path:
    """PARENT/ holding a training run, a notes file and the source artifact."""
    p = tmp_path / "parent"
    (p / "run" / "checkpoints").mkdir(parents=True)
    (p / "run" / "checkpoints" / "task_00.pt").write_bytes(os.urandom(200))
    (p / "run" / "state.json").write_text('{"config": {}, "completed_tasks": 1}')
    (p / "notes.txt").write_text("my notes\n")
    _artifact(p / "art")
    return p


def test_bundle_into_its_own_artifact_is_refused(parent):
    art = parent / "art"
    before = _snapshot(art)
    with pytest.raises(UserError, match="is the input"):
        make_bundle(art, art, "tflite-int8", force=True)
    assert _snapshot(art) == before


def test_bundle_over_the_folder_holding_the_artifact_is_refused(parent):
    before = _snapshot(parent)
    with pytest.raises(UserError, match="contains the input"):
        make_bundle(parent / "art", parent, force=True)
    assert _snapshot(parent) == before


def test_dotdot_out_is_resolved_before_anything_is_created(parent):
    before = _snapshot(parent)
    with pytest.raises(UserError, match="already exists and is not empty"):
        make_bundle(parent / "art", parent / "run" / "nosub" / "..")  # = PARENT/run, a run
    assert _snapshot(parent) == before
    assert not (parent / "run" / "nosub").exists()


def test_force_replaces_only_a_bundle(parent, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "photo.jpg").write_bytes(os.urandom(100))
    with pytest.raises(UserError, match="replaces only a bundle folder"):
        make_bundle(parent / "art", user, force=True)
    assert _snapshot(user) == {"photo.jpg": (user / "photo.jpg").read_bytes()}
    with pytest.raises(UserError, match="a run folder"):  # a run is not a bundle either, even with --force
        (parent / "run" / MARKER).write_text('{"tool": "edgead", "kind": "run"}')
        make_bundle(parent / "art", parent / "run", force=True)


def test_force_replaces_an_earlier_bundle_marked_or_not(parent, tmp_path):
    out = tmp_path / "b"
    make_bundle(parent / "art", out, "tflite-int8")
    assert folder_kind(out) == "bundle" and (out / MARKER).is_file()
    with pytest.raises(UserError, match="pass --force"):
        make_bundle(parent / "art", out, "onnx")
    make_bundle(parent / "art", out, "onnx", force=True)
    assert (out / "artifact" / "trunk.onnx").is_file() and not (out / "artifact" / "trunk.int8.tflite").exists()
    (out / MARKER).unlink()  # a bundle written before the marker is recognised by its files
    assert folder_kind(out) == "bundle"
    make_bundle(parent / "art", out, "tflite-int8", force=True, archive=False)
    assert (out / "artifact" / "trunk.int8.tflite").is_file()


def test_killed_bundles_partial_folder_is_removed_next_time(parent, tmp_path):
    out = tmp_path / "b"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f".b.partial-{int(dead.stdout)}-abcd1234"
    live = tmp_path / f"{partial_prefix(out)}efgh5678"  # this process: a command still writing
    for p in (stale, live):
        (p / "firmware_sim").mkdir(parents=True)
    other = tmp_path / f".c.partial-{int(dead.stdout)}-abcd1234"  # another OUT's: not ours to touch
    other.mkdir()
    assert clean_partials(out) == [stale]
    assert live.is_dir() and other.is_dir()


def test_a_previous_bundle_moved_aside_by_a_killed_swap_is_restored_or_removed(parent, tmp_path):
    out = tmp_path / "b"
    make_bundle(parent / "art", out, "tflite-int8", archive=False)
    before = _snapshot(out)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    aside = tmp_path / f".b.old-{dead}-123"
    os.replace(out, aside)  # killed after moving the old bundle aside, before the new one was renamed in
    assert clean_partials(out) == [] and _snapshot(out) == before and not aside.exists()
    aside.mkdir()  # killed after the swap, before the old one was removed
    assert clean_partials(out) == [aside] and _snapshot(out) == before


def test_cli_refusal_is_a_clear_error(parent):
    art = parent / "art"
    before = _snapshot(art)
    r = subprocess.run([sys.executable, "-m", "firmware_sim", "bundle", str(art), str(art), "--force"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"OUT {art}: is the input {art}" in r.stderr
    assert _snapshot(art) == before
