"""Threshold rules: parsing with clear errors, the value each rule gives, the best-F1 cut, and calibration."""

from __future__ import annotations

import numpy as np
import pytest

from edgead.engine.evaluate import DEFAULT_THRESHOLD_RULE, fit_calibration
from edgead.engine.thresholds import ThresholdRule, best_f1_threshold, deployed_f1
from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig, TeacherStudent
from firmware_sim.preprocess import Preprocess


@pytest.mark.parametrize("text", ["quantile", "quantile:0", "quantile:1.5", "sigma:-1", "sigma:x", "pct:0.9",
                                  "pseudo-f1:2", "", "quantile:nan", "far", "far:0", "far:1", "far:-0.1", "far:1.5",
                                  "far:x", "far:inf", "pseudo-band:0.7", "pseudo-band:1.5,0.1", "pseudo-band:0.7,1",
                                  "pseudo-band:a,b"])
def test_bad_rules_are_refused_with_the_rule_named(text):
    with pytest.raises(EdgeadError, match="threshold rule") as e:
        ThresholdRule.parse(text)
    assert repr(text) in str(e.value)


def test_rules_round_trip_and_values():
    normal = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert str(ThresholdRule.parse("quantile:0.5")) == "quantile:0.5"
    assert ThresholdRule.parse(" sigma:2 ") == ThresholdRule("sigma", 2.0)
    assert ThresholdRule.parse(DEFAULT_THRESHOLD_RULE) == ThresholdRule.parse(str(ThresholdRule.parse(
        DEFAULT_THRESHOLD_RULE)))
    assert ThresholdRule.parse("quantile:0.5").threshold(normal) == 3.0
    assert ThresholdRule.parse("quantile:1").threshold(normal) == 5.0
    assert ThresholdRule.parse("sigma:1").threshold(normal) == pytest.approx(3.0 + np.std(normal))
    assert np.isnan(ThresholdRule.parse("sigma:1").threshold(np.array([])))
    with pytest.raises(EdgeadError, match="pseudo-defect"):
        ThresholdRule.parse("pseudo-f1").threshold(normal)


def test_best_f1_threshold_separates_and_prefers_fewer_false_alarms():
    normal, bad = np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8])
    t = best_f1_threshold(normal, bad)
    assert 0.3 < t < 0.7 and t == pytest.approx(0.5)
    labels, scores = np.r_[np.zeros(3), np.ones(2)], np.r_[normal, bad]
    assert deployed_f1(labels, scores, t) == 1.0
    # overlapping: any cut leaves an error; the chosen one is the best F1 there is
    normal, bad = np.array([0.1, 0.5, 0.6]), np.array([0.4, 0.9])
    labels, scores = np.r_[np.zeros(3), np.ones(2)], np.r_[normal, bad]
    t = best_f1_threshold(normal, bad)
    best = max(deployed_f1(labels, scores, c) for c in np.r_[scores, -1.0])
    assert deployed_f1(labels, scores, t) == pytest.approx(best)
    # equal scores cannot be split: the cut falls between distinct values
    t = best_f1_threshold(np.array([0.5, 0.5]), np.array([0.5, 0.9]))
    assert t == pytest.approx(0.7)


def test_fit_calibration_follows_the_rule(synth_root, tmp_path):
    model = TeacherStudent(DetectorConfig.defaults("paste", "mcunet-in3", image_size=64))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(6, 64, 64, 3), dtype=np.uint8)
    pre = Preprocess(image_size=64)
    q = fit_calibration(model, images, pre, rule="quantile:0.5")
    s = fit_calibration(model, images, pre, rule="sigma:2")
    p = fit_calibration(model, images, pre, rule="pseudo-f1")
    assert q.threshold_rule == "quantile:0.5" and q.quantile == 0.5
    assert q.score_min <= q.threshold <= q.score_max
    assert s.threshold == pytest.approx(s.score_mean + 2 * s.score_std)
    assert 0.0 <= s.quantile <= 1.0 and p.threshold_rule == "pseudo-f1"
    assert np.isfinite(p.threshold)
    with pytest.raises(EdgeadError, match="threshold rule"):
        fit_calibration(model, images, pre, rule="median")


def test_runs_saved_before_the_rule_was_recorded_resume_with_the_legacy_rule():
    from edgead.cl.run_folder import config_differences
    from edgead.engine.thresholds import LEGACY_THRESHOLD_RULE
    from edgead.engine.trainer import TrainConfig

    old = {"train": {k: v for k, v in TrainConfig().to_dict().items() if k != "threshold_rule"}}
    legacy = {"train": TrainConfig(threshold_rule=LEGACY_THRESHOLD_RULE).to_dict()}
    assert config_differences(old, legacy) == []
    assert config_differences(old, {"train": TrainConfig(threshold_rule="sigma:7").to_dict()}) == ["train"]
    with pytest.raises(EdgeadError, match="threshold rule 'x'"):
        TrainConfig(threshold_rule="x")


def test_deployed_balanced_accuracy_does_not_reward_flagging_everything():
    from edgead.engine.thresholds import deployed_balanced_accuracy

    labels = np.array([0] + [1] * 9)  # a mostly defective test set
    scores = np.linspace(0.0, 1.0, 10)
    flag_all = -1.0
    assert deployed_f1(labels, scores, flag_all) == pytest.approx(18 / 19)  # F1 looks excellent
    assert deployed_balanced_accuracy(labels, scores, flag_all) == 0.5  # a coin would do as well
    assert deployed_balanced_accuracy(labels, scores, 0.05) == 1.0
    assert deployed_balanced_accuracy(labels[1:], scores[1:], 0.5) is None  # no good image: undefined
    assert deployed_balanced_accuracy(labels, scores, float("nan")) is None


def test_far_rule_is_the_split_conformal_order_statistic():
    from edgead.engine.thresholds import conformal_far_threshold, far_achievable, far_normals_needed

    normal = np.arange(1.0, 40.0)  # 39 held-out normals: k = ceil(40 * 0.95) = 38
    assert ThresholdRule.parse("far:0.05").threshold(normal) == 38.0
    assert str(ThresholdRule.parse("far:0.05")) == "far:0.05"
    assert conformal_far_threshold(normal, 0.05) == (38.0, pytest.approx(1 - 38 / 40))
    assert far_normals_needed(0.05) == 19 and far_achievable("far:0.05", 19) == 0.05
    assert far_achievable("far:0.05", 4) == pytest.approx(0.2) and far_achievable("quantile:0.9", 4) is None
    # the guarantee: over many exchangeable draws the realised false-alarm rate stays at or below A
    rng = np.random.default_rng(0)
    rule = ThresholdRule.parse("far:0.1")
    alarms = []
    for _ in range(400):
        held, new = rng.lognormal(size=29), rng.lognormal(size=200)
        alarms.append((new > rule.threshold(held)).mean())
    assert np.mean(alarms) <= 0.1 + 0.01  # 1 - k/(n+1) = 0.1 exactly for n = 29


def test_far_rule_with_too_few_normals_warns_with_the_achievable_rate():
    from edgead.engine.thresholds import ThresholdWarning

    with pytest.warns(ThresholdWarning, match=r"5 held-out normals cannot certify .* 0\.05.*1/\(n\+1\) = 0\.167"):
        t = ThresholdRule.parse("far:0.05").threshold(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert t == 5.0  # their maximum, which certifies 1/6


def test_pseudo_band_keeps_the_pseudo_cut_inside_the_normals_band():
    rule = ThresholdRule.parse("pseudo-band:0.7,0.1")
    assert rule.needs_pseudo and ThresholdRule.parse(str(rule)) == rule
    normal = np.arange(1.0, 51.0)
    q70 = float(np.quantile(normal, 0.7))
    assert rule.threshold(normal, np.array([0.5, 0.6])) == q70  # pseudo cut inside the normals: raised
    assert rule.threshold(normal, np.array([500.0, 600.0])) == 46.0  # far above them: lowered to far:0.1
    pseudo = np.arange(40.5, 80.0)
    inside = ThresholdRule.parse("pseudo-f1").threshold(normal, pseudo)
    assert q70 < inside < 46.0 and rule.threshold(normal, pseudo) == inside


def test_pseudo_band_drops_its_upper_end_when_the_normals_cannot_certify_it():
    rule = ThresholdRule.parse("pseudo-band:0.7,0.1")  # 0.1 needs 9 normals
    pseudo = np.array([40.0, 50.0, 60.0])
    cut = ThresholdRule.parse("pseudo-f1").threshold(np.arange(1.0, 6.0), pseudo)
    assert cut > 5.0  # above all five normals: the maximum of five is no 10 % cut, so it is kept
    assert rule.threshold(np.arange(1.0, 6.0), pseudo) == cut
    nine = np.arange(1.0, 10.0)
    assert rule.threshold(nine, pseudo) == 9.0  # nine normals certify 0.1: clipped to far:0.1 (their maximum)
    assert rule.threshold(np.arange(1.0, 6.0), np.array([0.1, 0.2])) == float(np.quantile(np.arange(1.0, 6.0), 0.7))


def test_deployed_row_reports_rates_ceiling_and_normals():
    from edgead.cl.deployed import decision_table, deployed_row, deployed_summary

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9])
    row = deployed_row(labels, scores, task=0.25, n_normals=7)
    assert row["deployed_fpr_task"] == 0.5 and row["deployed_tpr_task"] == 1.0
    assert row["deployed_bacc_task"] == 0.75 and row["threshold_task"] == 0.25 and row["n_normals"] == 7
    # the ceiling: the best balanced accuracy over all thresholds (cut between 0.6 and 0.7, or 0.3 and 0.5)
    assert row["ceiling_bacc"] == pytest.approx(0.875) and row["ceiling_threshold"] == pytest.approx(0.65)
    assert all(deployed_row(labels, scores, task=t)["deployed_bacc_task"] <= row["ceiling_bacc"] + 1e-12
               for t in np.r_[scores, -1.0])
    assert "deployed_bacc_agnostic" not in row
    with pytest.raises(ValueError, match="unknown threshold kinds"):
        deployed_row(labels, scores, nonsense=0.3)
    table = decision_table([row], ["mpdd"])
    assert table["mpdd"]["gap"] == pytest.approx(0.125) and "7 held-out normal" in table["mpdd"]["warning"]
    assert decision_table([{**row, "n_normals": 25}], ["x"])["x"]["warning"] is None
    summary = deployed_summary([[row]], ["mpdd"])
    assert summary["balanced_accuracy"]["per_task"]["mpdd"]["ceiling"] == pytest.approx(0.875)
    assert summary["balanced_accuracy"]["per_task"]["mpdd"]["task"] == 0.75
    assert summary["balanced_accuracy"]["per_task"]["mpdd"]["agnostic"] is None  # other kinds: not computed
    assert summary["decisions"]["per_task"]["mpdd"]["false_alarm_rate"] == 0.5


def test_fit_calibration_records_what_far_certifies():
    from edgead.engine.thresholds import ThresholdWarning

    model = TeacherStudent(DetectorConfig.defaults("paste", "mcunet-in3", image_size=64))
    images = np.random.default_rng(1).integers(0, 255, size=(4, 64, 64, 3), dtype=np.uint8)
    with pytest.warns(ThresholdWarning, match="4 held-out normals cannot certify"):
        cal = fit_calibration(model, images, Preprocess(image_size=64), rule="far:0.05")
    assert cal.far_achievable == pytest.approx(0.2) and cal.threshold == pytest.approx(cal.score_max)
