"""The training recipe: a budget in optimiser steps, --resize recorded by `edgead train`, the dev / report split
and the recipe benchmark's choice (made on dev, never on report) and --quick run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgead.data.dev_split import dev_report_split
from edgead.engine.trainer import TrainConfig, train_task
from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig, TeacherStudent
from firmware_sim.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[2]


# -- the dev / report split ----------------------------------------------------------------------------------

def _test_set():
    types = ["good"] * 20 + ["crack"] * 9 + ["hole"] * 6 + ["fray"] * 3
    labels = [0 if t == "good" else 1 for t in types]
    return np.asarray(labels), types


def test_dev_report_split_is_stratified_disjoint_and_seeded():
    labels, types = _test_set()
    dev, rep = dev_report_split(labels, types, seed=0, key="cat")
    assert len(np.intersect1d(dev, rep)) == 0
    np.testing.assert_array_equal(np.union1d(dev, rep), np.arange(len(labels)))
    t = np.asarray(types)
    for kind, n in (("good", 20), ("crack", 9), ("hole", 6), ("fray", 3)):
        k = int((t[dev] == kind).sum())
        assert k in (n // 2, n - n // 2), kind  # half of each stratum, rounded
    assert abs(len(dev) - len(rep)) <= 2
    again, _ = dev_report_split(labels, types, seed=0, key="cat")
    np.testing.assert_array_equal(dev, again)  # deterministic per seed
    other = [dev_report_split(labels, types, seed=s, key="cat")[0] for s in (1, 2, 3)]
    assert any(not np.array_equal(dev, o) for o in other)
    assert not np.array_equal(dev, dev_report_split(labels, types, seed=0, key="other")[0])


def test_dev_report_split_refuses_too_few():
    with pytest.raises(EdgeadError, match="1 defective test image"):
        dev_report_split([0, 0, 0, 1], ["good"] * 3 + ["x"], key="weld")
    with pytest.raises(EdgeadError, match="expected"):
        dev_report_split([0, 1], ["good"], key="weld")
    with pytest.raises(EdgeadError, match="dev fraction"):
        dev_report_split([0, 0, 1, 1], ["good", "good", "x", "x"], dev_fraction=1.0)


# -- a budget in optimiser steps --------------------------------------------------------------------------------

def _tiny_model():
    torch.manual_seed(0)
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64, pretrained=False)
    return TeacherStudent(det, load_teacher=False)


@pytest.mark.parametrize("steps,batch,n,epochs", [(7, 4, 10, 3), (3, 8, 10, 2), (1, 32, 10, 1)])
def test_steps_budget_runs_exactly_that_many_steps(steps, batch, n, epochs):
    images = np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    cfg = TrainConfig(steps=steps, batch_size=batch, progress=False, select_every=0)
    assert cfg.n_epochs(n, batch) == epochs
    rep = train_task(_tiny_model(), images, images[:0], Preprocess(image_size=64), cfg)
    assert rep["steps"] == steps and rep["epochs"] == epochs == len(rep["history"])
    # --epochs still works: every batch of every epoch
    rep = train_task(_tiny_model(), images, images[:0], Preprocess(image_size=64),
                     TrainConfig(epochs=2, batch_size=batch, progress=False, select_every=0))
    assert rep["epochs"] == 2 and rep["steps"] == 2 * -(-n // batch)


def test_train_config_refuses_bad_steps_and_resize():
    with pytest.raises(EdgeadError, match="steps 0"):
        TrainConfig(steps=0)
    with pytest.raises(EdgeadError, match="resize 'crop'"):
        TrainConfig(resize="crop")


def test_train_records_steps_and_resize_and_eval_uses_them(synth_root, tmp_path, edgead_in_process):
    _edgead = edgead_in_process  # the CLI's main(), in process (tests/cli/test_cli.py runs real processes)
    out = tmp_path / "run"
    r = _edgead("train", "--data", synth_root, "--tasks", "nut", "--image-size", 64, "--steps", 3,
                "--batch-size", 4, "--resize", "pad", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["train"]["steps"] == 3 and res["config"]["train"]["resize"] == "pad"
    assert res["timings"]["per_task"][0]["steps"] == 3
    payload = torch.load(out / "checkpoints" / "task_00.pt", weights_only=True)
    assert payload["preprocess"]["resize_mode"] == "pad"
    r = _edgead("eval", "--run", out, "--per-defect", "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)["metrics"]["nut"]
    assert ev["per_defect"] and all(0.0 <= v["pixel_auroc"] <= 1.0 for v in ev["per_defect"].values())
    # eval reads the mode from the checkpoint, so it reproduces the run's own numbers
    assert ev["image_auroc"] == pytest.approx(res["metrics"]["image_auroc"]["final_average"])
    assert ev["pixel_auroc"] == pytest.approx(res["metrics"]["pixel_auroc"]["final_average"])
    r = _edgead("train", "--data", synth_root, "--tasks", "nut", "--resize", "crop", "--out", tmp_path / "x")
    assert r.returncode == 2 and "crop" in r.stderr


# -- the recipe benchmark ----------------------------------------------------------------------------------------

def test_recipe_choice_is_made_on_dev_not_report():
    from bench_recipe import choose

    def row(cat, rec, half, img, t):
        return {"category": cat, "recipe": rec, "half": half, "image_auroc_mean": img, "pixel_auroc_mean": None,
                "aupro_mean": None, "deployed_f1_mean": 0.5, "train_s_mean": t}

    summary = []
    for cat in ("a", "b"):
        summary += [row(cat, "before", "dev", 0.80, 10), row(cat, "before", "report", 0.80, 10),
                    row(cat, "dev-best", "dev", 0.90, 12), row(cat, "dev-best", "report", 0.82, 12),
                    row(cat, "report-best", "dev", 0.85, 12), row(cat, "report-best", "report", 0.95, 12),
                    row(cat, "too-slow", "dev", 0.99, 40), row(cat, "too-slow", "report", 0.99, 40)]
    c = choose(summary, max_time=1.5)
    assert c["chosen"] == "dev-best"
    assert c["report_gain_image_auroc"] == pytest.approx(0.02)
    assert c["time_ratio"] == pytest.approx(1.2)
    assert c["per_recipe"]["before"]["report"]["pixel_auroc"] is None  # n/a stays n/a, never 0


def test_recipe_parse_and_refuse():
    from bench_recipe import parse_recipe, resolve

    name, over = parse_recipe("mine:steps=600,batch_size=16,lr=0.2,resize=tile")
    r = resolve(name, over)
    assert (r["steps"], r["batch_size"], r["lr"], r["resize"], r["image_size"]) == (600, 16, 0.2, "tile", 256)
    with pytest.raises(Exception, match="unknown key 'stepz'"):
        parse_recipe("x:stepz=3")
    with pytest.raises(SystemExit, match="resize 'crop'"):
        resolve("x", {"resize": "crop"})


def test_recipe_quick(tmp_path):
    import bench_recipe

    assert bench_recipe.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "recipe_quick.json").read_text())
    assert saved["complete"] and saved["command"] and saved["machine"]
    rows = saved["rows"]
    assert {r["half"] for r in rows} == {"dev", "report"}
    assert {r["recipe"] for r in rows} == set(bench_recipe.QUICK_RECIPES)
    for r in rows:
        assert 0.0 <= r["image_auroc"] <= 1.0 and r["train_s"] > 0
        assert r["deployed_f1"] is None or 0.0 <= r["deployed_f1"] <= 1.0
    steps = {r["recipe"]: r["steps"] for r in rows}
    assert steps["s6-b4"] == steps["s6-b4-pad"] == 6
    # the two halves are disjoint and fixed: the same sizes for every recipe
    n = {(r["category"], r["half"]) for r in rows}
    assert len({(r["category"], r["half"], r["n_test"]) for r in rows}) == len(n)
    assert saved["choice"]["chosen"] in bench_recipe.QUICK_RECIPES
    assert (tmp_path / "recipe_quick.csv").is_file() and (tmp_path / "recipe_quick_summary.csv").is_file()


def test_steps_budget_spaces_selection_checks_out():
    from edgead.engine.trainer import MAX_SELECTION_CHECKS

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    val = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    cfg = TrainConfig(steps=60, batch_size=4, progress=False)  # one step per epoch: 60 epochs
    rep = train_task(_tiny_model(), images, val, Preprocess(image_size=64), cfg)
    checks = [h["epoch"] for h in rep["history"] if "selection" in h]
    assert rep["epochs"] == 60 and 2 <= len(checks) <= MAX_SELECTION_CHECKS + 1
    assert checks[-1] == 60 and 1 <= rep["selected_epoch"] <= 60


def test_recipe_merge_recomputes_from_rows(tmp_path):
    import bench_recipe

    rows = []
    for cat, gain in (("a", 0.1), ("b", 0.0)):
        for rec, base in (("before", 0.7), ("better", 0.7 + gain)):
            for half in ("dev", "report"):
                rows.append({"category": cat, "recipe": rec, "seed": 0, "half": half, "n_test": 4,
                             "image_auroc": base, "pixel_auroc": None, "aupro": None, "deployed_f1": 0.5,
                             "train_s": 1.0, "steps": 1, "epochs": 1, "selected_epoch": 1})
    for i, cat in enumerate(("a", "b")):
        part = [r for r in rows if r["category"] == cat]
        (tmp_path / f"p{i}.json").write_text(json.dumps({
            "command": "x", "date": "d", "complete": True, "rows": part,
            "recipes": {"before": bench_recipe.BEFORE, "better": {**bench_recipe.BEFORE, "steps": 9}}}))
    files = f"{tmp_path / 'p0.json'},{tmp_path / 'p1.json'}"
    assert bench_recipe.main(["--merge", files, "--categories", "a,b", "--out-dir", str(tmp_path), "--tag", "all"]) == 0
    saved = json.loads((tmp_path / "recipe_all.json").read_text())
    assert saved["choice"]["chosen"] == "better" and saved["choice"]["categories"] == ["a", "b"]
    assert saved["choice"]["report_gain_image_auroc"] == pytest.approx(0.05)
    assert [c["pass"] for c in saved["checks"]] == [True, True]


# -- the budget floor --------------------------------------------------------------------------------------------

def test_budget_floor_applies_to_the_default_epochs_only():
    from edgead.engine.trainer import DEFAULT_EPOCHS

    cfg = TrainConfig()  # 20 epochs at batch 32, floor: 1000 steps at batch 8 under 300 steps
    assert cfg.epochs is None and cfg.n_epochs(100, 32) == DEFAULT_EPOCHS
    small = cfg.budget(37)  # 20 x 2 = 40 steps: floored
    assert (small.steps, small.batch_size) == (1000, 8) and cfg.steps is None  # a copy; cfg unchanged
    assert cfg.budget(448).steps == 1000  # 20 x 14 batches = 280 steps < 300: floored too
    assert cfg.budget(449) is cfg  # 20 x 15 = 300 steps: trained as before
    # From the second task on half of each batch is replay: 16 current images per step, so more steps.
    assert cfg.budget(300).steps == 1000 and cfg.budget(300, replay_ratio=0.5) is cfg
    for kept in (TrainConfig(epochs=3), TrainConfig(steps=5), TrainConfig(min_steps=0)):
        assert kept.budget(10) is kept  # explicit epochs / steps, or the floor off: as given
    with pytest.raises(EdgeadError, match="min steps -1"):
        TrainConfig(min_steps=-1)
    with pytest.raises(EdgeadError, match="floor 0 steps"):
        TrainConfig(floor_steps=0)


def test_floored_task_trains_the_floor_and_few_steps_are_warned_about():
    from edgead.engine.trainer import BudgetWarning

    images = np.random.default_rng(0).integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    pre = Preprocess(image_size=64)
    # A small floor for speed: 20 epochs x 1 batch = 20 < 50 steps -> 7 steps at batch 4 (2 epochs of 3 batches).
    cfg = TrainConfig(min_steps=50, floor_steps=7, floor_batch=4, progress=False, select_every=0)
    with pytest.warns(BudgetWarning, match="only 7 optimiser steps on 10 images"):
        rep = train_task(_tiny_model(), images, images[:0], pre, cfg)
    assert (rep["steps"], rep["batch_size"], rep["budget_floor"], rep["epochs"]) == (7, 4, True, 3)
    with pytest.warns(BudgetWarning, match="only 1 optimiser steps"):  # explicit epochs: as given, warned
        rep = train_task(_tiny_model(), images, images[:0], pre, TrainConfig(epochs=1, progress=False,
                                                                             select_every=0))
    assert (rep["steps"], rep["budget_floor"]) == (1, False)


def test_runs_saved_before_the_floor_resume_with_their_explicit_epochs():
    from edgead.cl.run_folder import config_differences

    old = {k: v for k, v in TrainConfig(epochs=20).to_dict().items()
           if k not in ("min_steps", "floor_steps", "floor_batch")}
    assert config_differences({"train": old}, {"train": TrainConfig(epochs=20).to_dict()}) == []
    assert config_differences({"train": old}, {"train": TrainConfig().to_dict()}) == ["train"]  # the floor differs


def test_bench_budget_chooses_on_dev_and_checks_the_bars(tmp_path):
    import bench_budget

    src = ROOT / "benchmarks" / "results" / "recipe_six_3seeds.json"
    counts = "battery_weld=37,mpdd_metal_plate=53,bsdata=568,elpv_mono=470,elpv_poly=736,magnetic_tile=762"
    assert bench_budget.main(["--from", str(src), "--train-images", counts, "--out", str(tmp_path / "b.json")]) == 0
    saved = json.loads((tmp_path / "b.json").read_text())
    by_t = {r["min_steps"]: r for r in saved["table"]}
    assert by_t[0]["floored"] == [] and by_t[0]["time_ratio"] == pytest.approx(1.0)
    assert set(by_t[1000]["floored"]) == set(saved["train_images"])  # every category under 1000 default steps
    # Flooring every category costs Magnetic-Tile more than 0.005 DEV image AUROC: such a T is never chosen.
    assert by_t[1000]["worst_gain_dev"] < -0.005 and saved["chosen"] < 1000
    chosen = by_t[saved["chosen"]]
    assert {"battery_weld", "mpdd_metal_plate"} <= set(chosen["floored"])
    assert chosen["auroc_dev"] == max(r["auroc_dev"] for r in saved["table"] if r["worst_gain_dev"] >= -0.005)
    assert saved["chosen"] == TrainConfig().min_steps  # the default is the DEV choice
    assert [c["pass"] for c in saved["checks"]] == [True, True, True]
    with pytest.raises(SystemExit, match="not a saved bench_recipe results file"):
        bench_budget.main(["--from", str(tmp_path / "missing.json")])
