"""Export of the other detectors: STFPM-MCUNet to full-int8 TFLite (one `full` graph), and a backbone without a
Keras mirror (MobileNetV2) to ONNX and ONNX int8. Each trains its own tiny run (about 10 s together)."""

from __future__ import annotations

import json

import pytest
from edgead.export.pipeline import ExportOptions, export_run
from edgead.export.tflite import inspect

from edgead.cl.config import ReplayConfig
from edgead.cl.runner import run_stream
from edgead.data import TaskStream
from edgead.data.synth import generate_dataset
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig
from firmware_sim.manifest import load_manifest
from tests.conftest import MCUNET_DIR

# Trains and exports real models: minutes on a 2-core machine (CI runs it; -m 'not slow' skips it).
pytestmark = pytest.mark.slow

WEIGHTS = MCUNET_DIR
SIZE = 64



def test_stfpm_exports_one_full_graph(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAD_WEIGHTS_DIR", str(WEIGHTS))
    data = generate_dataset(tmp_path / "data", ["brick"], seed=1, image_size=SIZE, n_train=12, n_test=4)
    det = DetectorConfig.defaults("stfpm", "mcunet-in3", image_size=SIZE)
    run_stream(TaskStream(data, ["brick"]), det, TrainConfig(epochs=1, batch_size=8, progress=False),
               ReplayConfig(), tmp_path / "run", log=lambda m: None)
    out = tmp_path / "art"
    result = export_run(tmp_path / "run", out, ExportOptions(formats=["tflite-int8"], calibration=8, io="uint8",
                                                              allow_drift=True))
    m = load_manifest(out)
    assert m.model == "stfpm" and list(m.data["formats"]["tflite-int8"]["graphs"]) == ["full"]
    full = m.graph("tflite-int8", "full")
    assert full["inputs"][0]["dtype"] == "uint8" and full["inputs"][0]["quantization"]["scale"] == [1.0]
    assert {t["type"] for t in inspect((out / "full.int8.tflite").read_bytes())["tensors"]} <= {"INT8", "INT32", "UINT8"}
    assert list(result["fidelity"]["formats"]["tflite-int8"]) == ["full"]


def test_other_backbones_export_to_onnx(tmp_path):
    # A random MobileNetV2 (fidelity is not meaningful for random nets: docs/toolchain.md); it must export and run.
    data = generate_dataset(tmp_path / "data", ["brick"], seed=2, image_size=SIZE, n_train=12, n_test=4)
    det = DetectorConfig.defaults("stfpm", "mobilenet_v2", image_size=SIZE, pretrained=False)
    run_stream(TaskStream(data, ["brick"]), det, TrainConfig(epochs=1, batch_size=8, progress=False),
               ReplayConfig(), tmp_path / "run", log=lambda m: None)
    with pytest.raises(EdgeadError, match="mcunet-in3 only"):
        export_run(tmp_path / "run", tmp_path / "t", ExportOptions(formats=["tflite-int8"]))
    out = tmp_path / "art"
    export_run(tmp_path / "run", out, ExportOptions(formats=["onnx", "onnx-int8"], calibration=8, allow_drift=True))
    m = load_manifest(out)
    assert m.backbone == "mobilenet_v2" and set(m.formats) == {"onnx", "onnx-int8"}
    fid = json.loads((out / "fidelity.json").read_text())
    assert fid["formats"]["onnx"]["full"]["map_cosine_min"] > 0.9999
