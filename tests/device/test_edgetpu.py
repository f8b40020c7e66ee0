"""The Edge TPU path: `--format edgetpu` compiles the full-int8 TFLite graphs with edgetpu_compiler (a stand-in
script on PATH here: the real compiler is not installable on this machine), the manifest records each compiled
file beside its original, `--delegate edgetpu` picks the compiled files, and without the compiler the message
gives the commands to run by hand and how to record their result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgead.errors import EdgeadError
from firmware_sim.edgetpu import add_edgetpu, compiled_names, edgetpu_graph_files
from firmware_sim.errors import UserError
from firmware_sim.manifest import load_manifest, sha256_file
from tests.conftest import tiny_run
from tests.device.edgetpu_artifact import edgetpu_artifact, write_stand_in

ROOT = Path(__file__).resolve().parents[2]


def _no_compiler_path() -> str:
    """PATH without any edgetpu_compiler (there is none on this machine; a real one would be hidden too)."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (Path(p) / "edgetpu_compiler").exists())


def _fw(*args, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "firmware_sim", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> dict:
    return edgetpu_artifact(tmp_path_factory)


def test_compiled_names_follow_the_compiler():
    assert compiled_names("trunk.int8.tflite") == ("trunk.int8_edgetpu.tflite", "trunk.int8_edgetpu.log")


def test_export_edgetpu_without_compiler_says_what_to_run(tmp_path_factory, tmp_path, monkeypatch):
    run = tiny_run(tmp_path_factory)["run"]
    from edgead.export.pipeline import ExportOptions, export_run

    monkeypatch.setenv("PATH", _no_compiler_path())
    out = tmp_path / "art"
    with pytest.raises(EdgeadError) as e:
        export_run(run, out, ExportOptions(formats=["edgetpu"], calibration=8))
    msg = str(e.value)
    assert "edgetpu_compiler is not on PATH" in msg and "--format tflite-int8" in msg
    assert f"edgetpu_compiler -s -o {out} {out / 'trunk.int8.tflite'} {out / 'head.int8.tflite'}" in msg
    assert f"python -m firmware_sim edgetpu {out}" in msg
    assert not out.exists()  # refused before any work


@pytest.mark.slow
def test_export_records_compiled_graphs_beside_originals(art):
    m = load_manifest(art["art"])  # sizes and hashes of every file, the compiled ones included
    entry = m.data["formats"]["tflite-int8"]
    for name in ("trunk", "head", "full"):
        g = entry["graphs"][name]
        compiled, log = compiled_names(g["file"])
        assert g["edgetpu"] == {"file": compiled, "log": log}
        for f in (g["file"], compiled, log):
            assert m.data["files"][f]["sha256"] == sha256_file(art["art"] / f)
        # The stand-in copies its input: the compiled file is the original's bytes.
        assert (art["art"] / compiled).read_bytes() == (art["art"] / g["file"]).read_bytes()
    assert entry["edgetpu"]["compiler"] == "edgetpu_compiler"
    assert entry["edgetpu"]["compiler_version"] == "Edge TPU Compiler version stand-in"
    # trunk and head compiled together (they share the Edge TPU's parameter cache), full alone.
    calls = [c.split() for c in (art["bin"] / "calls.txt").read_text().splitlines() if c != "--version"]
    assert [[Path(a).name for a in c if a.endswith(".tflite")] for c in calls] == [
        ["trunk.int8.tflite", "head.int8.tflite"], ["full.int8.tflite"]]
    assert "onnx-int8" in m.formats and "edgetpu" not in m.formats


@pytest.mark.slow
def test_delegate_edgetpu_picks_the_compiled_files(art, tmp_path):
    m = load_manifest(art["art"])
    files = edgetpu_graph_files(m, "tflite-int8", ["trunk", "head"])
    assert {n: p.name for n, p in files.items()} == {"trunk": "trunk.int8_edgetpu.tflite",
                                                     "head": "head.int8_edgetpu.tflite"}
    # Without a Coral the delegate library is what is missing, and the error says so.
    r = _fw("profile", "--artifact", art["art"], "--delegate", "edgetpu", "--runs", "1", path=_no_compiler_path())
    assert r.returncode == 2 and "libedgetpu" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_compile_by_hand_then_record(art, tmp_path):
    """The manual route: an artifact without compiled graphs, no compiler here -> the message's commands, run
    elsewhere (the stand-in), then `python -m firmware_sim edgetpu ART` records the result."""
    from firmware_sim.bundle import make_bundle

    plain = make_bundle(art["art"], tmp_path / "b", "tflite-int8", archive=False)["manifest"]
    plain = Path(plain).parent
    m = load_manifest(plain)
    assert not any(f.endswith("_edgetpu.tflite") for f in m.data["files"])
    with pytest.raises(UserError, match="python -m firmware_sim edgetpu"):
        edgetpu_graph_files(m, "tflite-int8", ["trunk", "head"])
    with pytest.raises(UserError, match="asks for the Edge TPU-compiled graphs, and this artifact has none"):
        make_bundle(plain, tmp_path / "tpu", "edgetpu")
    no_compiler = _no_compiler_path()
    r = _fw("edgetpu", plain, path=no_compiler)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "edgetpu_compiler is not on PATH" in r.stderr and f"edgetpu_compiler -s -o {plain}" in r.stderr
    # "Compile elsewhere": the stand-in, run by hand as the message says, writes into the artifact folder.
    tools = write_stand_in(tmp_path / "bin")
    for group in (["trunk.int8.tflite", "head.int8.tflite"], ["full.int8.tflite"]):
        subprocess.run([str(tools), "-s", "-o", str(plain), *(str(plain / f) for f in group)], check=True)
    r = _fw("edgetpu", plain, "--no-compile", path=no_compiler)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["compiled"] == {"trunk": "trunk.int8_edgetpu.tflite", "head": "head.int8_edgetpu.tflite",
                               "full": "full.int8_edgetpu.tflite"} and out["compiler"] is None
    m = load_manifest(plain)
    assert edgetpu_graph_files(m, "tflite-int8", ["full"])["full"].name == "full.int8_edgetpu.tflite"
    # A compiled file changed after recording is refused like any other artifact file.
    (plain / "head.int8_edgetpu.tflite").write_bytes(b"tampered")
    with pytest.raises(UserError, match="head.int8_edgetpu.tflite"):
        load_manifest(plain)


@pytest.mark.slow
def test_edgetpu_needs_tflite_int8(art, tmp_path):
    from firmware_sim.bundle import make_bundle

    onnx_only = Path(make_bundle(art["art"], tmp_path / "b", "onnx-int8", archive=False)["manifest"]).parent
    with pytest.raises(UserError, match="no tflite-int8 format here"):
        add_edgetpu(onnx_only)
    shutil.rmtree(tmp_path / "b")
