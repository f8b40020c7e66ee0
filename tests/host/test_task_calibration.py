"""Per-task calibration: thresholds per task, recalibrated by anchors inside the budget, deployed F1."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgead.cl.calibration import CalibrationAnchors, rescale, task_agnostic
from edgead.cl.config import ReplayConfig
from edgead.cl.runner import run_stream
from edgead.data import TaskStream
from edgead.engine.checkpoint import load_checkpoint
from edgead.engine.thresholds import deployed_f1
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.models.teacher_student import Calibration, DetectorConfig
from firmware_sim.codecs import get_codec

DET = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
CFG = TrainConfig(epochs=1, batch_size=8, seed=0, progress=False, val_fraction=0.25)


def test_deployed_f1_counts_at_the_given_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    assert deployed_f1(labels, scores, 0.55) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp 2, fp 1, fn 1
    assert deployed_f1(labels, scores, 0.45) == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert deployed_f1(labels, scores, 5.0) == 0.0  # nothing flagged: every defect missed
    assert deployed_f1(labels, scores, float("nan")) is None


def test_rescale_and_task_agnostic():
    a = Calibration(threshold=2.0, score_mean=1.0, score_std=0.5, score_min=0.1, score_max=3.0, n_images=4)
    b = Calibration(threshold=5.0, score_mean=4.0, score_std=1.0, score_min=0.5, score_max=6.0, n_images=4)
    r = rescale(a, 1.5)
    assert (r.threshold, r.score_max, r.fit_threshold, r.drift_ratio) == (3.0, 4.5, 2.0, 1.5)
    assert rescale(a, float("nan")).threshold == 2.0  # unknown drift: the fitted threshold stays
    g = task_agnostic([a, b])
    assert (g.threshold, g.score_min, g.score_max, g.n_images) == (5.0, 0.1, 6.0, 8)
    assert g.score_mean == pytest.approx(2.5)
    assert g.score_std > max(a.score_std, b.score_std)  # pooled: includes the spread between the tasks


def test_stream_keeps_one_calibration_per_task_inside_the_budget(synth_root, tmp_path):
    names = ["nut", "brick", "pill"]
    budget = 60_000
    res = run_stream(TaskStream(synth_root, names), DET, CFG, ReplayConfig("compressed-replay", "int8-channel", budget),
                     tmp_path / "r", log=lambda m: None)
    cal, mem = res["calibration"], res["memory"]
    assert cal["method"] == "anchor-drift" and cal["inside_budget"]
    per = cal["per_task"]
    assert list(per) == names
    assert all(math.isfinite(per[n]["threshold"]) for n in names)
    # earlier tasks were rescaled by their anchors' drift; the last is as fitted
    for n in names[:-1]:
        ratio = per[n]["drift_ratio"]
        assert ratio > 0 and per[n]["threshold"] == pytest.approx(per[n]["fit_threshold"] * ratio)
    assert cal["task_agnostic"]["threshold"] == pytest.approx(max(per[n]["threshold"] for n in names))
    crop = get_codec("int8-channel").bytes_per_sample(tuple(cal["anchor_latent_crop"]))
    assert mem["calibration_bytes"] == cal["bytes"] == 3 * crop
    assert mem["total_bytes"] == mem["additional_bytes"] + mem["calibration_bytes"] <= budget
    dep = res["deployed"]
    assert list(dep["per_task"]) == names
    for n in names:
        for k, v in dep["per_task"][n].items():
            assert v is None or 0.0 <= v <= 1.0, (n, k, v)
    assert [len(r) for r in dep["matrix"]["task"]] == [1, 2, 3]
    thr = dep["threshold_per_task"]
    for n in names:
        assert thr[n]["task"] == pytest.approx(per[n]["threshold"])
    # the research-only kinds (oracle, fit, ...) are benchmarks' plugins, never computed by the loop
    assert all(thr[n]["oracle"] is None and thr[n]["fit"] is None for n in names)
    # the checkpoint carries every task's calibration (what export writes into the manifest)
    model, _, meta = load_checkpoint(tmp_path / "r" / "checkpoints" / "task_02.pt")
    assert model.calibration.threshold == pytest.approx(cal["task_agnostic"]["threshold"])
    assert set(model.calibration.per_task) == set(names)
    assert len(meta["fit_calibrations"]) == 3
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["deployed"]["per_task"] == dep["per_task"]


def test_without_anchors_thresholds_stay_as_fitted(synth_root, tmp_path):
    res = run_stream(TaskStream(synth_root, ["nut", "brick"]), DET, CFG, ReplayConfig(calibration_anchors=0),
                     tmp_path / "r", log=lambda m: None)
    cal = res["calibration"]
    assert cal["method"] == "fit-only" and res["memory"]["calibration_bytes"] == 0
    assert cal["per_task"]["nut"]["drift_ratio"] is None
    nut = cal["per_task"]["nut"]
    assert nut["threshold"] == nut["fit_threshold"]


def test_budget_below_the_anchors_is_refused(synth_root, tmp_path):
    with pytest.raises(EdgeadError, match="replay budget 2,000 B is too small: smaller than one sample plus the calibration anchors"):
        run_stream(TaskStream(synth_root, ["nut", "brick"]), DET, CFG,
                   ReplayConfig("compressed-replay", "int8-channel", 2_000), tmp_path / "r", log=lambda m: None)


def test_anchors_save_and_load_round_trip(synth_root, tmp_path):
    from edgead.models.teacher_student import TeacherStudent
    from firmware_sim.preprocess import Preprocess

    model = TeacherStudent(DET)
    pre = Preprocess(image_size=64)
    imgs = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    a = CalibrationAnchors(2, model.latent_shape(), 64, seed=0)
    a.add(0, model, imgs, pre)
    assert len(a.encoded[0]) == 2 and a.ratio(model, 0) == pytest.approx(1.0)
    a.save(tmp_path / "a.npz")
    b = CalibrationAnchors(2, model.latent_shape(), 64, seed=0)
    b.load(tmp_path / "a.npz")
    assert b.fit_scores == a.fit_scores and b.score(model, 0) == pytest.approx(a.score(model, 0))


def test_resume_restores_the_anchors_and_thresholds(synth_root, tmp_path, monkeypatch):
    from edgead.cl import learner as runner_mod

    stream = TaskStream(synth_root, ["nut", "brick"])
    replay = ReplayConfig("compressed-replay", "int8-channel", 60_000)
    kw = dict(log=lambda m: None)
    full = run_stream(stream, DET, CFG, replay, tmp_path / "full", **kw)
    real, calls = runner_mod.train_task, {"n": 0}

    def dies_on_second_task(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner_mod, "train_task", dies_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        run_stream(stream, DET, CFG, replay, tmp_path / "cut", **kw)
    monkeypatch.setattr(runner_mod, "train_task", real)
    resumed = run_stream(stream, DET, CFG, replay, tmp_path / "cut", resume=True, **kw)
    assert resumed["calibration"]["per_task"] == full["calibration"]["per_task"]
    assert resumed["deployed"]["per_task"] == full["deployed"]["per_task"]


def test_drift_rule_damps_and_bounds_the_ratio():
    from edgead.cl.calibration import DriftRule

    assert DriftRule().factor(0.25) == pytest.approx(0.25)  # plain: the ratio itself
    assert DriftRule(damping=0.5).factor(0.25) == pytest.approx(0.5)  # halfway, geometrically
    assert DriftRule(bound=2.0).factor(0.25) == pytest.approx(0.5) and DriftRule(bound=2.0).factor(8) == 2.0
    assert DriftRule(damping=0.5, bound=2.0).factor(1.5) == pytest.approx(1.5 ** 0.5)
    for bad in (float("nan"), 0.0, -1.0, float("inf")):
        assert np.isnan(DriftRule().factor(bad))


def test_anchor_statistic_is_kept_with_the_anchors(tmp_path):
    from edgead.models.teacher_student import TeacherStudent
    from firmware_sim.preprocess import Preprocess

    model, pre = TeacherStudent(DET), Preprocess(image_size=64)
    imgs = np.random.default_rng(1).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    img, mean = (CalibrationAnchors(1, model.latent_shape(), 64, seed=0, statistic=s) for s in ("image", "mean"))
    for a in (img, mean):
        a.add(0, model, imgs, pre)
    # the same crop: its map's mean is below its image score (a top-k mean of the same map)
    assert 0 < mean.fit_scores[0] < img.fit_scores[0]
    mean.save(tmp_path / "m.npz")
    back = CalibrationAnchors(1, model.latent_shape(), 64, seed=0)  # the default statistic, whatever it is
    back.load(tmp_path / "m.npz")
    assert back.statistic == "mean" and back.score(model, 0) == pytest.approx(mean.fit_scores[0])
    # a file written before the statistic was recorded: its fit scores are image scores
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        old = {k: z[k] for k in z.files if k != "statistic"}
    np.savez(tmp_path / "old.npz", **old)
    back.load(tmp_path / "old.npz")
    assert back.statistic == "image"
    with pytest.raises(EdgeadError, match="anchor statistic 'median'"):
        CalibrationAnchors(1, model.latent_shape(), 64, seed=0, statistic="median")
