"""The artifact manifest: written once, verified on load (schema, sizes, hashes), numpy + stdlib only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.digest import sha256_file
from firmware_sim.errors import UserError
from firmware_sim.manifest import MANIFEST_NAME, SCHEMA_VERSION, load_manifest, write_manifest

REPO = Path(__file__).resolve().parents[2]


def _minimal(files: list[str]) -> dict:
    graph = {"file": files[0], "inputs": [{"name": "image", "shape": [1, 8, 8, 3], "dtype": "int8",
                                          "layout": "NHWC", "quantization": {"scale": [1.0], "zero_point": [-128],
                                                                             "axis": None}}],
             "outputs": [{"name": "latent", "shape": [1, 2, 2, 4], "dtype": "int8", "layout": "NHWC",
                          "quantization": {"scale": [0.05], "zero_point": [3], "axis": None}}]}
    return {"model": "paste", "backbone": "mcunet-in3", "levels": [6, 10, 14],
            "input": {"image_size": 16, "preprocess": {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}},
            "formats": {"tflite-int8": {"graphs": {"trunk": graph}}}, "calibration": {"threshold": 0.5},
            "tools": {"numpy": "2"}}


@pytest.fixture
def art(tmp_path) -> Path:
    (tmp_path / "trunk.int8.tflite").write_bytes(b"model bytes" * 10)
    (tmp_path / "fidelity.json").write_text("{}")
    write_manifest(tmp_path, _minimal(["trunk.int8.tflite"]), ["trunk.int8.tflite", "fidelity.json"])
    return tmp_path


def test_round_trip(art):
    m = load_manifest(art)
    assert m.data["schema_version"] == SCHEMA_VERSION
    assert m.data["files"]["trunk.int8.tflite"] == {"size": 110, "sha256": sha256_file(art / "trunk.int8.tflite")}
    assert m.latent()["quantization"]["zero_point"] == [3]
    assert m.preprocess.image_size == 16 and m.threshold == 0.5
    assert m.graph_path("tflite-int8", "trunk") == art / "trunk.int8.tflite"
    with pytest.raises(UserError, match="no graph 'head'"):
        m.graph("tflite-int8", "head")


@pytest.mark.parametrize("change,match", [
    (lambda p: p.write_bytes(b"model bytes" * 10 + b"x"), "size"),
    (lambda p: p.write_bytes(b"MODEL BYTES" * 10), "sha256"),
    (lambda p: p.unlink(), "missing"),
])
def test_changed_file_is_named(art, change, match):
    change(art / "trunk.int8.tflite")
    with pytest.raises(UserError, match=f"trunk.int8.tflite.*{match}|{match}.*trunk.int8.tflite"):
        load_manifest(art)
    load_manifest(art, verify=False)  # the schema alone still reads


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "upgrade"),
    (lambda d: d.update(schema="other"), "not an edgead artifact manifest"),
    (lambda d: d.pop("levels"), "lacks"),
    (lambda d: d["files"].update({"../evil": {"size": 0, "sha256": ""}}), "plain file name"),
    (lambda d: d["formats"]["tflite-int8"]["graphs"]["trunk"].update(file="other.tflite"), "not listed"),
])
def test_bad_manifest_refused(art, edit, match):
    d = json.loads((art / MANIFEST_NAME).read_text())
    edit(d)
    (art / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(UserError, match=match):
        load_manifest(art)


def test_unreadable_or_absent_manifest(tmp_path):
    with pytest.raises(UserError, match="no manifest"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_device_modules_import_without_torch_or_tensorflow():
    code = ("import sys; import firmware_sim.manifest, firmware_sim.anomaly_map; "
            "bad = [m for m in ('torch', 'tensorflow', 'edgead', 'export') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
