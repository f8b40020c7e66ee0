"""The device loop end to end: a run is exported, the device keeps frames of a product it knows and of a new
one under their names (`firmware_sim run --buffer --task NAME`), `edgead learn --device-buffer` merges them,
and the next export carries every product's threshold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgead.cli import main

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mcunet-in3"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _fw(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware_sim", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=300)


@pytest.mark.slow  # trains, exports tflite-int8 and onnx, runs the device twice: minutes on 2 shared cores
def test_device_kept_products_come_back_with_their_thresholds(tmp_path, monkeypatch):
    assert (WEIGHTS / "mcunet-320kb-1mb_imagenet.pth").is_file(), f"MCUNet-in3 weights not found in {WEIGHTS}"
    from edgead.export.pipeline import ExportOptions, export_run

    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data import TaskStream
    from edgead.data.synth import generate_dataset
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig
    from firmware_sim.manifest import load_manifest
    from firmware_sim.replay_buffer import ReplayBuffer

    monkeypatch.setenv("EDGEAD_WEIGHTS_DIR", str(WEIGHTS))
    data = Path(generate_dataset(tmp_path / "data", ["nut", "brick"], seed=0, image_size=64, n_train=12, n_test=4))
    run = tmp_path / "run"
    run_stream(TaskStream(data, ["nut"]), DetectorConfig.defaults("paste", "mcunet-in3", image_size=64),
               TrainConfig(epochs=1, batch_size=8, progress=False, val_fraction=0.25),
               ReplayConfig("compressed-replay", "int8-channel", 30_000), run, log=lambda m: None)
    export_run(run, tmp_path / "art", ExportOptions(formats=["tflite-int8"], calibration=8, allow_drift=True))
    buf = tmp_path / "flash" / "kept.edgeadrb"
    # A product the run knows, and one it has never seen (gadget: in no dataset the run read). --keep all: a
    # one-epoch model calls most frames anomalous, and the default keeps none of those.
    for product, images in (("nut", "nut"), ("gadget", "brick")):
        r = _fw("run", "--artifact", tmp_path / "art", "--images", data / images / "train" / "good",
                "--buffer", buf, "--budget", "200kB", "--task", product, "--keep", "all")
        assert r.returncode == 0, r.stderr[-2000:]
    kept = ReplayBuffer.load(buf)[0]
    assert sorted(kept.task_names().values()) == ["gadget", "nut"]

    assert main(["learn", "--run", str(run), "--device-buffer", str(buf), "--quiet"]) is None
    res = json.loads((run / "results.json").read_text())
    assert res["tasks"] == ["nut", "gadget"] and res["task_data"][1]["data"] is None
    assert res["versions"][-1]["merged"] == {"nut": len(list(kept.records(kept.task_id_of("nut")))),
                                             "gadget": len(list(kept.records(kept.task_id_of("gadget"))))}
    assert res["memory"]["per_task"]["gadget"]["samples"] >= 1 and res["memory"]["total_bytes"] <= 30_000
    export_run(run, tmp_path / "art2", ExportOptions(formats=["onnx"], calibration=8, allow_drift=True))
    m = load_manifest(tmp_path / "art2")
    assert m.tasks == ["nut", "gadget"]
    for name in m.tasks:
        assert m.calibration(name)["threshold"] == pytest.approx(res["calibration"]["per_task"][name]["threshold"])
