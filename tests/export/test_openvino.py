"""`edgead export --format openvino,openvino-int8` on a tiny trained PaSTe-MCUNet run, with real OpenVINO and NNCF:
IR files (.xml + .bin) in the manifest, fidelity, the device runtime (in process and `python -m firmware_sim run`),
`device profile` timing it beside the other formats, a tampered .bin refused, and a bundle that carries it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from edgead.export.pipeline import ExportOptions, export_run

from firmware_sim import commands
from firmware_sim.bundle import make_bundle
from firmware_sim.device import Device
from firmware_sim.errors import UserError
from firmware_sim.manifest import load_manifest
from tests.conftest import export_test_run

# Trains and exports real models: a couple of minutes on a 2-core machine (CI runs it; -m 'not slow' skips it).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FORMATS = ["openvino", "openvino-int8"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    run = export_test_run(tmp_path_factory)  # test_export's run (tests/conftest.py): trained once
    out = tmp_path_factory.mktemp("ov") / "art"
    result = export_run(run["run"], out, ExportOptions(formats=FORMATS, calibration=16, allow_drift=True))
    return {"art": out, "result": result, "data": run["data"]}


def test_ir_files_are_in_the_manifest_and_fp32_matches_the_float_model(exported):
    m = load_manifest(exported["art"])
    assert m.formats == FORMATS
    for fmt, suffix in (("openvino", ".openvino"), ("openvino-int8", ".int8.openvino")):
        for g in ("trunk", "head", "full"):
            entry = m.graph(fmt, g)
            assert entry["file"] == f"{g}{suffix}.xml" and entry["weights"] == f"{g}{suffix}.bin"
            assert {entry["file"], entry["weights"]} <= set(m.data["files"])
    assert "NNCF" in m.data["formats"]["openvino-int8"]["quantization"]
    assert "nncf" in m.data["tools"] and "openvino" in m.data["tools"]
    fid = exported["result"]["fidelity"]["formats"]
    for path in ("trunk+head", "full"):
        fp32 = fid["openvino"][path]
        assert fp32["within_tolerance"] and fp32["map_cosine_min"] > 0.9999  # the same float graph
        assert abs(fp32["image_auroc"]["delta"]) < 1e-9
        int8 = fid["openvino-int8"][path]
        # int8 on a barely trained model (chaotic by construction): close, not equal
        assert 0.95 < int8["map_cosine_mean"] < 1.0 and int8["latency_ms_per_image"]


def test_device_cli_and_in_process_agree(exported, tmp_path):
    img = next((exported["data"] / "nut" / "test").rglob("*.png"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for fmt in FORMATS:
        r = subprocess.run([sys.executable, "-m", "firmware_sim", "run", "--artifact", str(exported["art"]),
                            "--images", str(img), "--format", fmt, "--threads", "1"],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        line = json.loads(r.stdout.splitlines()[0])
        dev = Device(exported["art"], format=fmt, threads=1)
        assert dev.interpreter == "openvino" and dev.path == "trunk+head"
        assert line["score"] == pytest.approx(dev.infer(img).score, rel=1e-5)
    a = Device(exported["art"], format="openvino").infer(img)
    b = Device(exported["art"], format="openvino-int8").infer(img)
    assert np.corrcoef(a.map.ravel(), b.map.ravel())[0, 1] > 0.8  # int8 follows fp32 (a barely trained model)


def test_profile_times_openvino_beside_the_others(exported):
    res = commands.profile(exported["art"], ["coral-usb-rpi5", "rpi5"], runs=2, warmup=1, threads=1,
                           format="openvino")
    assert res["interpreter"] == "openvino"
    assert {"trunk.openvino.bin", "head.openvino.bin"} <= set(res["flash"]["model_files"])  # weights counted
    cmp = res["format_comparison"]
    assert set(cmp["formats"]) == set(FORMATS) and all(r["available"] and r["p50_ms"] > 0
                                                        for r in cmp["formats"].values())
    assert cmp["recommended"] in FORMATS
    assert [p["profile"] for p in res["profiles"]] == ["coral-usb-rpi5", "rpi5"]


def test_tampered_weights_are_refused(exported, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(exported["art"], art)
    blob = bytearray((art / "head.openvino.bin").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (art / "head.openvino.bin").write_bytes(bytes(blob))
    with pytest.raises(UserError, match=r"head\.openvino\.bin: sha256 differs"):
        Device(art, format="openvino")
    manifest = json.loads((art / "manifest.json").read_text())
    del manifest["files"]["head.openvino.bin"]
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="names weights file 'head.openvino.bin', which is not listed"):
        load_manifest(art, verify=False)


def test_bundle_carries_openvino_and_its_requirement(exported, tmp_path):
    res = make_bundle(exported["art"], tmp_path / "b", "openvino-int8", archive=False)
    out = Path(res["bundle"])
    names = {p.name for p in (out / "artifact").iterdir()}
    assert {f"{g}.int8.openvino.{ext}" for g in ("trunk", "head", "full") for ext in ("xml", "bin")} <= names
    assert not any(n.startswith(("trunk.openvino", "head.openvino")) for n in names)
    reqs = (out / "requirements-device.txt").read_text()
    assert "openvino>=" in reqs and "onnxruntime" not in reqs
    assert Device(out / "artifact").format == "openvino-int8"
