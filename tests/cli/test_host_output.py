"""Readable output on the host: verbosity, progress, eval table, joint memory, overlays, montages, weights
folders, and one --out for every benchmark."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from edgead.cl.config import ReplayConfig
from edgead.cl.evaluate_run import evaluate_run
from edgead.cl.results import METRICS
from edgead.cl.runner import run_stream
from edgead.cli.tables import LABELS, format_table
from edgead.data import TaskStream
from edgead.engine.trainer import TrainConfig
from edgead.models.backbones.registry import get_backbone_spec
from edgead.models.teacher_student import DetectorConfig
from edgead.models.weights import resolve_weights
from firmware_sim.overlay import BAR_HEIGHT, MIN_WIDTH, colorize, overlay_image
from tests.conftest import MCUNET_DIR, ROOT, SHARED

BENCHMARKS = ["bench_cl_quality", "bench_cl_speed", "bench_device", "bench_memory_budget", "bench_metrics",
              "bench_peer", "bench_scaling", "bench_single_task", "bench_speed"]


def test_weights_dir_may_hold_one_folder_per_backbone(monkeypatch):
    spec = get_backbone_spec("mcunet-in3")
    monkeypatch.setenv("EDGEAD_WEIGHTS_DIR", str(SHARED / "weights"))
    assert resolve_weights(spec, download=False) == SHARED / "weights" / "mcunet-in3" / spec.weights.filename
    monkeypatch.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))  # the file directly in the folder still works
    assert resolve_weights(spec, download=False) == MCUNET_DIR / spec.weights.filename


def _py(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_litert_info_and_foreign_warnings_hidden_unless_verbose():
    code = """
        import sys, warnings
        from edgead import console
        console.configure(console.{level})
        from firmware_sim.runtime import _quiet_native_info, tflite_module
        with _quiet_native_info():  # what TFLiteRunner wraps its interpreter's loading in
            tflite_module()[1](model_path=r"{model}").allocate_tensors()
        warnings.warn_explicit("third-party deprecation", DeprecationWarning, "x.py", 1, module="somelib")
        warnings.warn_explicit("edgead's own warning", UserWarning, "y.py", 1, module="edgead.data.loading")
        print("done", file=sys.stderr)
    """
    model = MCUNET_DIR / "mcunet-320kb-1mb_imagenet.tflite"
    normal = _py(code.format(level="NORMAL", model=model))
    verbose = _py(code.format(level="VERBOSE", model=model))
    assert normal.returncode == 0 and verbose.returncode == 0, normal.stderr + verbose.stderr
    assert "XNNPACK" not in normal.stderr and "XNNPACK" in verbose.stderr
    assert "third-party deprecation" not in normal.stderr and "third-party deprecation" in verbose.stderr
    assert "edgead's own warning" in normal.stderr and "done" in normal.stderr


def test_verbosity_flags_on_the_group():
    from edgead import console
    from edgead.cli import cli

    try:
        cli.main(args=["-q", "info", "--json"], standalone_mode=False)
        assert console.level() == console.QUIET and console.progress_disabled() is True
        cli.main(args=["info", "--json"], standalone_mode=False)
        assert console.level() == console.NORMAL and console.progress_disabled() is None
        with pytest.raises(Exception, match="contradict"):
            cli.main(args=["-v", "-q", "info"], standalone_mode=False)
    finally:
        console.configure(console.NORMAL)
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


def test_overlay_has_a_colour_bar_and_the_score():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    m = rng.random((64, 64)).astype(np.float32)
    with_score = overlay_image(pixels, m, score=0.1234, normalized=0.7, anomalous=True)
    without = overlay_image(pixels, m)
    assert with_score.shape[1] == MIN_WIDTH and with_score.shape[0] > 64
    x0 = (MIN_WIDTH - 64) // 2
    assert np.array_equal(with_score[:64, x0:x0 + 64], overlay_image(pixels, m)[:64, x0:x0 + 64])
    bar = with_score[64 + 2 + BAR_HEIGHT // 2, 4:MIN_WIDTH - 4]
    assert np.array_equal(bar[0], colorize(np.array([[0.0]]))[0, 0])  # the bar runs 0 -> 1, left to right
    assert np.array_equal(bar[-1], colorize(np.array([[1.0]]))[0, 0])
    text_rows = slice(64 + BAR_HEIGHT + 3 + 14, None)
    assert (with_score[text_rows] != 255).any() and not (without[text_rows] != 255).any()  # the score line


def test_montage_labels_and_keeps_aspect(tmp_path):
    from edgead.data.montage import LABEL_HEIGHT, fit_tile, save_montage
    from edgead.data.synth import generate_dataset

    wide = Image.fromarray(np.full((20, 80, 3), 200, np.uint8))
    t = fit_tile(wide, None, 40)
    rows = np.where((t != 40).any(axis=(1, 2)))[0]  # rows not background
    assert t.shape == (40, 40, 3) and len(rows) == 10  # 80x20 -> 40x10, centred, not stretched
    root = generate_dataset(tmp_path / "d", ("nut",), image_size=48, n_train=2, n_test=2)
    png = save_montage(TaskStream(root, ["nut"]), tmp_path / "m.png", tile=48, per_row=3)
    img = np.asarray(Image.open(png))
    assert img.shape == (48 + LABEL_HEIGHT, 3 * 48, 3)
    assert (img[48:, :48] < 128).any()  # a dark label on the white strip


@pytest.fixture(scope="module")
def joint_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint") / "run"
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
    cfg = TrainConfig(epochs=1, batch_size=8, seed=0, progress=False, val_fraction=0.25, select_every=0)
    return out, run_stream(TaskStream(synth_root, ["nut", "brick"]), det, cfg, ReplayConfig("joint"), out,
                           weights=str(MCUNET_DIR), log=lambda m: None)


def test_joint_counts_the_images_it_keeps(joint_run, synth_root):
    _, res = joint_run
    mem = res["memory"]
    n = {c: len(list((synth_root / c / "train" / "good").iterdir())) for c in ("nut", "brick")}
    assert mem["buffer_kind"] == "joint-images-uint8" and mem["buffer_samples"] == n
    assert mem["additional_bytes"] == sum(n.values()) * 64 * 64 * 3


def test_eval_table_and_eval_json(joint_run):
    out, res = joint_run
    r = evaluate_run(out)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(r["metrics"])) and saved["tasks"] == ["nut", "brick"]
    for task in ("nut", "brick"):
        assert r["metrics"][task]["image_auroc"] == pytest.approx(
            res["metrics"]["image_auroc"]["matrix"][1][["nut", "brick"].index(task)])
    lines = format_table(r).splitlines()
    assert lines[0].split() == ["task", *(LABELS.get(m, m) for m in METRICS)] and [x.split()[0] for x in lines[1:]] == ["nut", "brick", "average"]
    avg = float(lines[-1].split()[1])
    assert avg == pytest.approx(np.mean([r["metrics"][t]["image_auroc"] for t in ("nut", "brick")]), abs=5e-4)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_takes_out(name, monkeypatch, tmp_path):
    """Each script's own parser (captured as main builds it) accepts --out; old --out-dir spellings still work."""
    seen = {}

    def capture(self, args=None, namespace=None):
        seen["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        importlib.import_module(name).main(["--out", str(tmp_path)])
    actions = seen["parser"]._option_string_actions
    assert "--out" in actions
    if "--out-dir" in actions:
        assert actions["--out-dir"] is actions["--out"]
    if name in ("bench_cl_speed", "bench_device", "bench_metrics"):
        from benchkit import out_json

        assert out_json(tmp_path, "x.json") == tmp_path / "x.json"
        assert out_json(tmp_path / "y.json", "x.json") == tmp_path / "y.json"
