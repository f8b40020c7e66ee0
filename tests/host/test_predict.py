"""`edgead predict`: a run's torch checkpoint scores images with the JSON lines and overlays of `device run`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgead.cl.config import ReplayConfig
from edgead.cl.runner import run_stream
from edgead.cli import cli
from edgead.data import TaskStream
from edgead.engine.checkpoint import load_checkpoint
from edgead.engine.tensors import predict_images
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError, UserError
from edgead.models.teacher_student import DetectorConfig
from edgead.predict import load_host_detector, predict_run
from firmware_sim.overlay import MIN_WIDTH
from firmware_sim.preprocess import load_rgb
from tests.conftest import MCUNET_DIR

SIZE = 64


@pytest.fixture(autouse=True)
def _restore_log_env(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")


@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "run"
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=SIZE)
    cfg = TrainConfig(epochs=1, batch_size=4, seed=0, progress=False, val_fraction=0.25, select_every=0)
    run_stream(TaskStream(synth_root, ["nut", "pill"]), det, cfg, ReplayConfig(), out, weights=str(MCUNET_DIR),
               log=lambda m: None)
    return out


def _lines(text: str) -> list[dict]:
    return [json.loads(s) for s in text.splitlines() if s.strip()]


def test_cli_lines_scores_and_overlays(run, synth_root, tmp_path, capsys):
    images = synth_root / "pill" / "test"
    cli.main(args=["predict", "--run", str(run), "--images", str(images), "--out", str(tmp_path / "ov")],
             standalone_mode=False)
    out, err = capsys.readouterr()
    lines = _lines(out)
    files = sorted(p for p in images.rglob("*.png"))
    assert [Path(x["path"]) for x in lines] == files
    model, pre, _ = load_checkpoint(run / "checkpoints" / "task_01.pt")
    arrays = np.stack([pre.resize_uint8(load_rgb(p)) for p in files])
    _, scores = predict_images(model, arrays, pre)
    for line, score in zip(lines, scores, strict=True):
        assert set(line) == {"path", "score", "normalized_score", "decision", "latency_ms", "overlay"}
        assert line["score"] == pytest.approx(float(score), rel=1e-5)
        assert line["decision"] == ("anomalous" if score > model.calibration.threshold else "normal")
        assert 0.0 <= line["normalized_score"] <= 1.0
        ov = Image.open(line["overlay"])
        assert ov.size[0] == max(SIZE, MIN_WIDTH) and ov.size[1] > SIZE
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    assert summary["images"] == len(files) and summary["format"] == "torch"
    assert summary["anomalous"] == sum(x["decision"] == "anomalous" for x in lines)
    assert summary["threshold"] == pytest.approx(model.calibration.threshold)


def test_task_by_name_or_index_and_errors(run, synth_root):
    one = synth_root / "nut" / "test" / "good" / "000.png"
    by_name, by_index = [], []
    predict_run(run, one, checkpoint="nut", emit=by_name.append)
    predict_run(run, one, checkpoint=0, emit=by_index.append)
    model, pre, _ = load_checkpoint(run / "checkpoints" / "task_00.pt")
    _, s = predict_images(model, pre.resize_uint8(load_rgb(one))[None], pre)
    assert by_name[0]["score"] == by_index[0]["score"] == pytest.approx(float(s[0]), rel=1e-5)
    with pytest.raises(EdgeadError, match=r"--task grass: expected a completed task .*\['nut', 'pill'\]"):
        load_host_detector(run, "grass")
    with pytest.raises(UserError, match="no such file or folder"):
        predict_run(run, synth_root / "missing")


def test_task_name_decides_with_that_products_threshold(run, synth_root):
    """`--task NAME`: the final checkpoint, that task's own threshold (as `device run --task NAME`)."""
    one = synth_root / "pill" / "test" / "good" / "000.png"
    model, _, _ = load_checkpoint(run / "checkpoints" / "task_01.pt")
    per = model.calibration.per_task
    assert set(per) == {"nut", "pill"} and per["nut"]["threshold"] != per["pill"]["threshold"]
    for name in ("nut", "pill"):
        lines = []
        summary = predict_run(run, one, task=name, emit=lines.append)
        assert summary["task"] == name and summary["threshold"] == pytest.approx(per[name]["threshold"])
        assert lines[0]["decision"] == ("anomalous" if lines[0]["score"] > per[name]["threshold"] else "normal")
    agnostic = predict_run(run, one)
    assert agnostic["task"] is None and agnostic["threshold"] == pytest.approx(model.calibration.threshold)
    with pytest.raises(EdgeadError, match="--task 'grass': not a task of this checkpoint; its tasks: nut, pill"):
        predict_run(run, one, task="grass")


def test_unreadable_file_is_skipped_like_the_device(run, synth_root, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.open(synth_root / "nut" / "test" / "good" / "000.png").save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not a png")
    warned, lines = [], []
    summary = predict_run(run, folder, emit=lines.append, warn=warned.append)
    assert summary["images"] == 1 and summary["skipped"] == 1 and "b.png" in warned[0]


def test_same_lines_as_device_run_on_an_onnx_export(run, synth_root, tmp_path):
    """The float ONNX export on the device runtime and the torch checkpoint on the host: same line keys,
    same decisions, scores equal to float rounding."""
    from edgead.export.pipeline import ExportOptions, export_run

    from firmware_sim import commands

    export_run(run, tmp_path / "art", ExportOptions(formats=["onnx"], calibration=8, allow_drift=True))
    images = synth_root / "pill" / "test"
    host, device = [], []
    predict_run(run, images, out=tmp_path / "h", emit=host.append)
    commands.run(tmp_path / "art", images, tmp_path / "d", emit=device.append)
    assert [set(h) for h in host] == [set(d) for d in device]
    for h, d in zip(host, device, strict=True):
        assert h["path"] == d["path"] and h["score"] == pytest.approx(d["score"], rel=1e-3, abs=1e-6)
        assert Path(h["overlay"]).name == Path(d["overlay"]).name
        assert Image.open(h["overlay"]).size == Image.open(d["overlay"]).size
