"""`from edgead import Detector`: the README's example runs as written, and the API agrees with the CLI."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgead.config_file import read_config, unknown_keys
from edgead.errors import EdgeadError
from edgead.predict import predict_run

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The ```python block right after the `api-example` marker in README.md."""
    text = README.read_text()
    m = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its API example block"
    return m.group(1)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Run the README example in a fresh folder; its variables for the tests below."""
    from tests.conftest import MCUNET_DIR

    where = tmp_path_factory.mktemp("api")
    old_cwd, old_env = Path.cwd(), os.environ.get("EDGEAD_WEIGHTS_DIR")
    os.environ["EDGEAD_WEIGHTS_DIR"] = str(MCUNET_DIR.parent)  # <dir>/<backbone>/<file>, as the README says
    os.chdir(where)
    try:
        scope: dict = {}
        exec(compile(readme_example(), "README.md", "exec"), scope)
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("EDGEAD_WEIGHTS_DIR", None)
        else:
            os.environ["EDGEAD_WEIGHTS_DIR"] = old_env
    return where, scope


def test_import_edgead_stays_light():
    code = ("import sys, edgead, firmware_sim; assert 'torch' not in sys.modules and 'PIL' not in sys.modules; "
            "from edgead import Detector; from firmware_sim import Device; "
            "from firmware_sim.device import Device as D; assert Device is D; print(Detector.__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(README.parent)})
    assert r.returncode == 0 and r.stdout.strip() == "Detector", r.stderr


def test_readme_example_trains_a_stream_and_writes_a_run(example):
    where, scope = example
    run = where / "demo-run"
    res = json.loads((run / "results.json").read_text())
    assert res["tasks"] == ["nut", "pill"] and res["completed_tasks"] == 2
    assert res["config"]["strategy"] == "compressed-replay" and 0 < res["memory"]["additional_bytes"] <= 50_000
    assert scope["res"]["metrics"] == res["metrics"]
    assert (run / "eval.json").is_file() and (run / "detector.pt").is_file()
    # the recorded options are valid `edgead train` options, so the CLI can repeat the API's run
    rec = read_config(run / "config.yaml")
    assert not unknown_keys(importlib.import_module("edgead.cli.train").train, rec)
    assert rec["strategy"] == "compressed-replay" and rec["budget"] == "50kB" and rec["tasks"] == "nut,pill"


def test_predict_matches_the_cli_and_takes_any_image_form(example):
    where, scope = example
    det = scope["det"]  # reloaded from the run folder by the example's last line
    folder = where / "demo-data" / "pill" / "test"
    lines = []
    predict_run(where / "demo-run", folder, emit=lines.append)
    pred = det.predict(folder)
    assert [Path(p) for p in pred.paths] == [Path(x["path"]) for x in lines]
    assert np.allclose(pred.scores, [x["score"] for x in lines], rtol=1e-5)
    assert list(pred.decisions) == [x["decision"] == "anomalous" for x in lines]
    # the scores are the model's post-processing of its maps (firmware_sim.anomaly_map.ScorePost)
    from firmware_sim.anomaly_map import ScorePost

    post = ScorePost.parse(det.config.score)
    assert pred.maps.shape == (len(lines), 64, 64) and np.allclose(post.score(pred.maps), pred.scores, rtol=1e-5)
    first = Path(pred.paths[0])
    arr = np.asarray(Image.open(first).convert("RGB"))
    same = det.predict([str(first), Image.open(first), arr, arr[None]])
    assert np.allclose(same.scores, pred.scores[0], rtol=1e-5) and same.paths[1:] == [None, None, None]
    # the saved checkpoint file gives the same numbers
    from edgead import Detector

    again = Detector.load(where / "demo-run" / "detector.pt").predict(folder)
    assert np.allclose(again.scores, pred.scores, rtol=1e-6)


def test_evaluate_on_given_data_equals_the_run_evaluation(example):
    where, scope = example
    det = scope["det"]
    own = det.evaluate()
    given = det.evaluate(where / "demo-data", ["nut", "pill"])
    for task in ("nut", "pill"):
        assert given["metrics"][task]["image_auroc"] == pytest.approx(own["metrics"][task]["image_auroc"])
    saved = json.loads((where / "demo-run" / "eval.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(own["metrics"]))


def test_untrained_detector_and_bad_input_errors(example):
    from edgead import Detector

    d = Detector(image_size=64)
    with pytest.raises(EdgeadError, match=r"Detector.predict: no trained model yet"):
        d.predict(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(EdgeadError, match="unknown strategy 'forget'"):
        d.fit("nowhere", strategy="forget")
    with pytest.raises(EdgeadError, match="images of type int"):
        example[1]["det"].predict(3)


def test_export_through_the_api(example, tmp_path):
    where, scope = example
    det = scope["det"]
    from firmware_sim.device import Device
    from firmware_sim.manifest import load_manifest

    # the README example's own export: int8 TFLite, what a Pi runs
    assert set(load_manifest(where / "demo-art").data["formats"]) == {"tflite-int8"}
    result = det.export(tmp_path / "art", formats=["onnx"], calibration=8, allow_drift=True)
    assert result["manifest"]["formats"].keys() == {"onnx"} and (tmp_path / "art" / "manifest.json").is_file()
    dev = Device(tmp_path / "art")  # fp32: the same scores as the host
    img = det.predict(example[0] / "demo-data" / "nut" / "test" / "good" / "000.png")
    assert dev.infer(img.paths[0]).score == pytest.approx(float(img.scores[0]), rel=1e-3)
    # the device draws overlays at the input image's size too (or in the model's frame when asked)
    from firmware_sim import commands
    from firmware_sim.overlay import MIN_WIDTH

    wide = tmp_path / "wide.png"
    Image.open(img.paths[0]).resize((400, 90)).save(wide)
    assert MIN_WIDTH < 400
    for frame, width in (("image", 400), ("model", max(64, MIN_WIDTH))):
        lines = []
        commands.run(tmp_path / "art", wide, tmp_path / f"ov-{frame}", emit=lines.append, map_frame=frame)
        assert Image.open(lines[0]["overlay"]).size[0] == width


def test_predict_per_task_overlays_and_maps_at_the_input_size(example, tmp_path):
    where, scope = example
    det = scope["det"]
    img = np.asarray(Image.open(where / "demo-data" / "nut" / "test" / "good" / "000.png").convert("RGB"))
    wide = np.asarray(Image.fromarray(img).resize((96, 40)))  # a non-square image, as a weld seam
    pred = det.predict([wide, img], out=tmp_path / "ov")
    assert isinstance(pred.maps, list) and pred.maps[0].shape == (40, 96) and pred.maps[1].shape == (64, 64)
    model = det.predict(wide, map_frame="model")
    assert model.maps.shape == (1, 64, 64) and model.scores[0] == pytest.approx(pred.scores[0])
    overlays = sorted((tmp_path / "ov").glob("*.png"))
    assert len(overlays) == 2 and Image.open(overlays[0]).size[1] > 40  # image height + the legend below it
    per_task = det.predict(img, task="nut")
    per = det._scorer.model.calibration.per_task["nut"]
    assert per_task.threshold == pytest.approx(per["threshold"]) and pred.threshold == det._scorer.threshold
    with pytest.raises(EdgeadError, match="not a task of this checkpoint"):
        det.predict(img, task="bolt")


def test_a_checkpoint_file_evaluates_and_exports_on_its_recorded_data(example, tmp_path):
    from edgead import Detector

    where, scope = example
    loaded = Detector.load(where / "demo-run" / "detector.pt")
    own = scope["det"].evaluate()
    again = loaded.evaluate()  # the data the file records (saved by the README example from a run)
    assert again["metrics"]["pill"]["image_auroc"] == pytest.approx(own["metrics"]["pill"]["image_auroc"])
    result = loaded.export(tmp_path / "art", formats=["onnx"], calibration=8, allow_drift=True)
    assert result["manifest"]["formats"].keys() == {"onnx"}
    assert result["fidelity"]["tasks"] == ["nut", "pill"]


def test_fit_takes_every_train_option_and_names_a_folder_task(example, tmp_path):
    from edgead import Detector

    where, _ = example
    cat = where / "demo-data" / "nut"
    det = Detector(image_size=64)
    defect = next(d.name for d in sorted((cat / "test").iterdir()) if d.name != "good")
    res = det.fit(normal=cat / "train" / "good", abnormal=cat / "test" / defect, mask=cat / "ground_truth" / defect,
                  name="nut-line-2",
                  threshold_rule="quantile:0.99", latent_crop="none", steps=2, batch_size=4, progress=False,
                  out=tmp_path / "run")
    assert res["tasks"] == ["nut-line-2"]
    assert res["config"]["train"]["threshold_rule"] == "quantile:0.99" and res["config"]["train"]["steps"] == 2
    rec = read_config(tmp_path / "run" / "config.yaml")
    assert not unknown_keys(importlib.import_module("edgead.cli.train").train, rec)
    assert rec["name"] == "nut-line-2" and rec["latent_crop"] == "none" and rec["threshold_rule"] == "quantile:0.99"
