"""`python -m firmware_sim calibrate`: a product's threshold from a few labelled images on the device, the manifest
rewritten atomically with the old threshold in its history; bad input changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from firmware_sim.__main__ import main as fw_main  # noqa: E402
from firmware_sim.manifest import MANIFEST_NAME, load_manifest  # noqa: E402
from tests.conftest import two_task_onnx  # noqa: E402


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> dict:
    """Two products trained briefly on generated data at 64 px and exported to ONNX (the session's, with
    tests/host/test_calibrate.py's run: tests/conftest.py)."""
    return two_task_onnx(tmp_path_factory)


def _labelled(data: Path, task: str, dest: Path) -> tuple[Path, Path]:
    """The task's good test images and its defective ones, as two folders."""
    good, bad = dest / "good", dest / "bad"
    shutil.copytree(data / task / "test" / "good", good)
    bad.mkdir(parents=True)
    for d in sorted((data / task / "test").iterdir()):
        if d.name != "good":
            for f in sorted(d.iterdir()):
                shutil.copy(f, bad / f"{d.name}_{f.name}")
    return good, bad


def _copy_art(art: Path, dest: Path) -> Path:
    shutil.copytree(art, dest)
    return dest


def test_calibrate_sets_the_task_threshold_and_keeps_history(art, tmp_path, capsys):
    a = _copy_art(art["art"], tmp_path / "art")
    good, bad = _labelled(art["data"], "nut", tmp_path / "nut")
    before = load_manifest(a)
    old_nut, old_brick = before.calibration("nut")["threshold"], before.calibration("brick")["threshold"]
    assert fw_main(["calibrate", "--artifact", str(a), "--task", "nut", "--normal", str(good), "--defect",
                    str(bad)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = load_manifest(a)  # still verifies: files unchanged, manifest valid
    nut = m.calibration("nut")
    assert nut["threshold"] == pytest.approx(out["threshold"]) and out["old_threshold"] == pytest.approx(old_nut)
    assert nut["history"][0]["threshold"] == pytest.approx(old_nut) and nut["labelled"]["method"] == out["method"]
    assert nut["labelled"]["n_normal"] == len(list(good.iterdir())) and nut["labelled"]["n_defect"] == len(
        list(bad.iterdir()))
    assert m.calibration("brick")["threshold"] == pytest.approx(old_brick)  # another product: untouched
    assert m.threshold == pytest.approx(max(nut["threshold"], old_brick))  # task-agnostic: still the max
    # the threshold follows from the scores printed: the library's choice on them
    from firmware_sim.decisions import NormalPrior, choose_threshold

    again = choose_threshold(out["normal_scores"], out["defect_scores"],
                             NormalPrior.from_calibration(before.calibration("nut")), out["method"])
    assert again["threshold"] == pytest.approx(out["threshold"])
    # the device decides with it
    assert fw_main(["run", "--artifact", str(a), "--images", str(good), "--task", "nut"]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["summary"]
    assert summary["threshold"] == pytest.approx(out["threshold"])
    # a second calibration keeps both earlier thresholds
    assert fw_main(["calibrate", "--artifact", str(a), "--task", "nut", "--normal", str(good), "--defect", str(bad),
                    "--method", "best-cut"]) == 0
    capsys.readouterr()
    hist = load_manifest(a).calibration("nut")["history"]
    assert len(hist) == 2 and hist[1]["threshold"] == pytest.approx(out["threshold"])
    # anchored anchors on the threshold set without labels, not on the labelled one it replaces: the same
    # images give the same threshold again
    assert out["method"] == "anchored"
    assert fw_main(["calibrate", "--artifact", str(a), "--task", "nut", "--normal", str(good), "--defect",
                    str(bad)]) == 0
    third = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert third["threshold"] == pytest.approx(out["threshold"]) and third["old_threshold"] != pytest.approx(old_nut)


@pytest.mark.parametrize("case", ["empty-normal", "missing-defect", "one-class", "unknown-task", "no-task",
                                  "tampered", "bad-method-file"])
def test_bad_input_is_a_clear_error_and_changes_nothing(art, tmp_path, capsys, case):
    a = _copy_art(art["art"], tmp_path / "art")
    good, bad = _labelled(art["data"], "nut", tmp_path / "nut")
    args = {"--artifact": str(a), "--task": "nut", "--normal": str(good), "--defect": str(bad)}
    expect = {"empty-normal": "--normal .*no image files", "missing-defect": "--defect .*no such folder",
              "one-class": "share .* image", "unknown-task": "'screw': not a task of .*its tasks: nut, brick",
              "no-task": "one threshold per product; say which with --task", "tampered": "sha256 differs|size",
              "bad-method-file": "--defect .*no image files"}[case]
    if case == "empty-normal":
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "notes.txt").write_text("not an image")
        args["--normal"] = str(empty)
    elif case == "missing-defect":
        args["--defect"] = str(tmp_path / "nowhere")
    elif case == "one-class":
        args["--defect"] = str(good)
    elif case == "unknown-task":
        args["--task"] = "screw"
    elif case == "no-task":
        del args["--task"]
    elif case == "tampered":
        onnx = next(p for p in sorted(a.iterdir()) if p.suffix == ".onnx")
        onnx.write_bytes(onnx.read_bytes() + b"\0")
    elif case == "bad-method-file":
        empty = tmp_path / "empty"
        empty.mkdir()
        args["--defect"] = str(empty)
    manifest_before = (a / MANIFEST_NAME).read_bytes()
    argv = ["calibrate", *[x for kv in args.items() for x in kv]]
    assert fw_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    import re

    assert re.search(expect, err), err
    assert (a / MANIFEST_NAME).read_bytes() == manifest_before


def test_single_threshold_artifact_calibrates_its_one_threshold(tmp_path):
    """The manifest logic on an artifact exported without per-task thresholds (no model run needed)."""
    from firmware_sim.calibrate import calibrated_manifest

    data = {"calibration": {"threshold": 0.5, "score_mean": 0.2, "score_std": 0.05, "n_images": 10}}
    result = {"threshold": 0.42, "method": "lognormal", "note": None, "n_normal": 3, "n_defect": 2,
              "false_alarm_rate": 0.0, "catch_rate": 1.0, "balanced_accuracy": 1.0, "ceiling": 1.0,
              "drift_ratio": 1.0}
    new = calibrated_manifest(data, None, result, "2026-01-01T00:00:00+00:00")
    assert new["calibration"]["threshold"] == 0.42 and new["calibration"]["history"][0]["threshold"] == 0.5
    assert data["calibration"]["threshold"] == 0.5  # the input is not modified
    assert np.isfinite(new["calibration"]["score_mean"])


def test_best_cut_is_the_best_balanced_accuracy_and_prefers_fewer_false_alarms():
    from firmware_sim.decisions import best_cut, ceiling, rates

    normal, defect = np.array([0.1, 0.2, 0.3, 0.6]), np.array([0.5, 0.7, 0.8, 0.9])
    thr, bacc = best_cut(normal, defect)
    # two cuts reach 0.875 (at 0.4 one good part is rejected, at 0.65 one defect is missed): the tie goes to
    # the higher threshold (fewer false alarms), halfway between neighbouring scores
    assert bacc == pytest.approx(0.875) and thr == pytest.approx(0.65)
    grid = np.r_[np.sort(np.r_[normal, defect]), -1.0]
    assert all(rates(normal, defect, t)["balanced_accuracy"] <= bacc + 1e-12 for t in grid)
    assert best_cut([0.5, 0.6], [0.1, 0.2]) == (0.6, 0.5)  # defects lower: nothing beats calling all good
    assert ceiling([0, 0, 1], [0.1, 0.2, 0.3])["ceiling"] == 1.0 and ceiling([1, 1], [0.1, 0.2])["ceiling"] is None


def test_lognormal_cut_pools_the_stored_normals_and_falls_back_when_defects_score_lower():
    from firmware_sim.decisions import NormalPrior, choose_threshold, lognormal_cut
    from firmware_sim.errors import UserError

    normal, defect = np.array([1.0, 1.0]), np.array([100.0])
    assert lognormal_cut(normal, defect) == pytest.approx(10.0)  # midpoint of log 1 and log 100
    prior = NormalPrior(mean=np.e ** 2, std=0.0, n=2)  # two held-out normals at e^2
    assert lognormal_cut(normal, defect, prior) == pytest.approx(np.exp(0.5 * (1.0 + np.log(100.0))))
    assert lognormal_cut([], defect, prior) == pytest.approx(np.exp(0.5 * (2.0 + np.log(100.0))))  # no good image
    res = choose_threshold([5.0, 6.0], [1.0, 7.0], None, "lognormal")  # defects lower on average
    assert res["method"] == "best-cut" and "best-cut used" in res["note"]
    assert NormalPrior.from_calibration({"score_mean": float("nan"), "score_std": 1.0, "n_images": 3}) is None
    with pytest.raises(UserError, match="at least one defective"):
        choose_threshold([1.0], [], None)
    with pytest.raises(UserError, match="at least one good image"):
        choose_threshold([], [2.0], None, "best-cut")
    with pytest.raises(UserError, match="calibration method 'median'"):
        choose_threshold([1.0], [2.0], None, "median")


def _bacc(t: float, mu_d: float = 3.0, sd_d: float = 1.5) -> float:
    """Balanced accuracy at threshold ``t`` when log scores of good parts are N(0, 1), of defects N(mu_d, sd_d)."""
    import math

    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    x = math.log(t)
    return 0.5 * (phi(x) + 1 - phi((x - mu_d) / sd_d))


def _losses(deployed_log: float, k: int, method: str, draws: int = 200) -> float:
    """Mean balanced-accuracy loss against the best threshold of k labelled defects + 5 good images drawn from
    the log-normal model above, the held-out normals' statistics (50 of them) and ``deployed_log`` stored.
    The anchoring alone: the drift check (tested below) is off, as there is no drift here."""
    import math

    from firmware_sim.decisions import NormalPrior, choose_threshold

    held = np.exp(np.random.default_rng(0).normal(0, 1, 50))  # the same held-out normals for every case
    rng = np.random.default_rng([k, int(100 * deployed_log)])
    prior = NormalPrior(float(held.mean()), float(held.std()), 50, float(np.exp(deployed_log)))
    best = max(_bacc(np.exp(x)) for x in np.linspace(-1, 4, 2001))
    return float(np.mean([best - _bacc(choose_threshold(np.exp(rng.normal(0, 1, 5)),
                                                        np.exp(rng.normal(3.0, 1.5, k)), prior, method,
                                                        drift_z=math.inf)["threshold"])
                          for _ in range(draws)]))


def test_anchored_keeps_a_good_deployed_threshold_and_moves_a_bad_one():
    best_log = 1.4  # the best cut of the model (N(0,1) vs N(3,1.5) log scores): bacc 0.888 at log t = 1.397
    assert _bacc(np.exp(best_log)) == pytest.approx(0.888, abs=1e-3)
    # a deployed threshold at the best cut: a few defects barely move it (lognormal alone loses 0.038 at k = 1)
    for k in (1, 3):
        anchored, lognormal = _losses(best_log, k, "anchored"), _losses(best_log, k, "lognormal")
        assert anchored < 0.01 and anchored < lognormal / 2, (k, anchored, lognormal)
    # a deployed threshold far too high (misses most defects, loss 0.14): labelled defects move it, more with more
    bad = 0.888 - _bacc(np.exp(3.0))
    assert bad > 0.1
    losses = [_losses(3.0, k, "anchored") for k in (1, 3, 10, 30)]
    assert losses[0] > losses[1] > losses[2] and losses[0] < bad * 0.75 and max(losses[2:]) < 0.03, losses
    # too low (false alarms, loss 0.066): moved up
    low = 0.888 - _bacc(np.exp(0.5))
    assert low > 0.05 and _losses(0.5, 10, "anchored") < low / 4


def test_anchored_cut_dead_zone_weight_and_the_anchor_it_uses():
    import math

    from firmware_sim.calibrate import calibrated_manifest
    from firmware_sim.decisions import (
        NormalPrior,
        anchored_cut,
        choose_threshold,
        lognormal_cut,
        unlabelled_threshold,
    )
    from firmware_sim.errors import UserError

    # within z standard errors (spread 1, 4 defects: se = 1 / (2 * 2) = 0.25 in log score): the anchor kept
    assert anchored_cut(np.exp(0.2), 1.0, 4, 1.0, z=1.0, k0=1.0) == 1.0
    # beyond: moved by the excess, weighted k / (k + k0), in either direction
    assert math.log(anchored_cut(np.exp(1.25), 1.0, 4, 1.0, z=1.0, k0=1.0)) == pytest.approx(1.0 * 4 / 5)
    assert math.log(anchored_cut(np.exp(-1.25), 1.0, 4, 1.0, z=1.0, k0=1.0)) == pytest.approx(-0.8)
    assert anchored_cut(7.0, 2.0, 3, 0.5, z=0.0, k0=0.0) == pytest.approx(7.0)  # no anchoring: the cut itself

    prior = NormalPrior(mean=1.0, std=0.5, n=30, threshold=2.0)
    good, defect = [0.8, 1.1, 0.9], [40.0, 60.0, 50.0]
    res = choose_threshold(good, defect, prior)  # the default method
    assert res["method"] == "anchored" and res["anchor_threshold"] == 2.0 and res["note"] is None
    assert res["labelled_cut"] == pytest.approx(lognormal_cut(good, defect, prior))
    assert 2.0 < res["threshold"] < res["labelled_cut"]  # moved up, not all the way
    # one defect whose cut is within one standard error of the anchor (the normals' log spread / 2): kept with
    # a dead zone of 1.5 standard errors, moved halfway in log score without one (k0 = 1)
    near = choose_threshold(good, [4.4], prior, z=1.5)
    assert abs(math.log(near["labelled_cut"] / 2.0)) < prior.log_std() / 2 and near["threshold"] == 2.0
    half = choose_threshold(good, [4.4], prior, z=0.0, k0=1.0)["threshold"]
    assert half == pytest.approx(np.sqrt(2.0 * near["labelled_cut"])) and half != 2.0
    # no stored threshold: plain lognormal, and the note says so
    res = choose_threshold(good, defect, NormalPrior(1.0, 0.5, 30))
    assert res["method"] == "lognormal" and "anchor" in res["note"]
    assert res["threshold"] == pytest.approx(lognormal_cut(good, defect, NormalPrior(1.0, 0.5, 30)))
    with pytest.raises(UserError, match="at least one defective image"):
        choose_threshold(good, [], prior, "anchored")
    with pytest.raises(UserError, match="at least one good image"):
        choose_threshold([], [3.0], None, "anchored")

    # the anchor: the threshold set without labels, also after labelled calibrations (device and host records)
    rec = {"threshold": 0.5, "score_mean": 0.2, "score_std": 0.05, "n_images": 10}
    assert NormalPrior.from_calibration(rec).threshold == 0.5
    result = {"threshold": 0.42, "method": "anchored", "note": None, "n_normal": 3, "n_defect": 2,
              "false_alarm_rate": 0.0, "catch_rate": 1.0, "balanced_accuracy": 1.0, "ceiling": 1.0,
              "drift_ratio": 1.0}
    data = calibrated_manifest({"calibration": rec}, None, result, "t1")
    data = calibrated_manifest(data, None, {**result, "threshold": 0.3}, "t2")
    assert data["calibration"]["threshold"] == 0.3 and unlabelled_threshold(data["calibration"]) == 0.5
    host = {**rec, "threshold": 0.42, "extra": {"labelled": {"method": "anchored"},
                                                "history": [{"threshold": 0.5}]}}
    assert unlabelled_threshold(host) == 0.5
    # a host-calibrated record exported, then calibrated on the device: the host's history is the older one
    both = calibrated_manifest({"calibration": host}, None, {**result, "threshold": 0.3}, "t3")["calibration"]
    assert both["history"][-1]["threshold"] == 0.42 and unlabelled_threshold(both) == 0.5
    assert unlabelled_threshold({**rec, "labelled": {"method": "best-cut"}}) is None  # replaced, no history


def test_labelled_good_parts_that_drifted_from_the_stored_normals_rescale_them_first():
    """After later tasks trained the model on, a product's scores can move away from the held-out normals its
    calibration stored (the five-product stream: every good part above a stale threshold). The labelled good
    images measure where they are now; beyond DRIFT_Z standard errors the stored statistics and the deployed
    threshold are rescaled by their ratio before anchored / lognormal use them."""
    import math

    from firmware_sim.decisions import DRIFT_Z, NormalPrior, choose_threshold, drift_rescaled, good_log_ratio

    assert math.isfinite(DRIFT_Z) and DRIFT_Z >= 1  # on by default, and not for every wobble
    held = np.exp(np.random.default_rng(0).normal(0, 1, 50))
    prior = NormalPrior(float(held.mean()), float(held.std()), 50, float(np.exp(1.4)))  # the best cut before drift
    rng = np.random.default_rng(1)
    shift = 2.0  # every score now e^2 times what it was: the best cut is at log t = 3.4, the stale one rejects ~90 %
    losses = {True: [], False: []}
    for _ in range(100):
        good, defect = np.exp(rng.normal(shift, 1, 5)), np.exp(rng.normal(3.0 + shift, 1.5, 5))
        for check in (True, False):
            res = choose_threshold(good, defect, prior, drift_z=DRIFT_Z if check else math.inf)
            losses[check].append(0.888 - _bacc(res["threshold"] / np.exp(shift)))
            assert (res["drift_ratio"] == 1.0) == (not check or "drift" not in (res["note"] or ""))
    # kept stale, 5 defects move the threshold only part of the way (loss about 0.10); rescaled, about 0.01
    loss = {k: float(np.mean(v)) for k, v in losses.items()}
    assert loss[False] > 0.08 and loss[True] < loss[False] / 4, loss

    # no drift: 5 good parts from the stored normals' own distribution are rarely rescaled. At z = 3 a plain
    # 3-standard-error test (a little more often than nominal: the stored moments are a log-normal fit) ...
    assert np.mean([drift_rescaled(np.exp(rng.normal(0, 1, 5)), prior, z=3.0)[1] != 1.0 for _ in range(200)]) <= 0.05
    # ... and at the default z with the log spread of the real categories' normals (0.3-0.9), where the 1.5x floor
    # decides: a calibration that did not drift keeps anchored's behaviour in most draws
    held = np.exp(np.random.default_rng(2).normal(0, 0.5, 50))
    tight = NormalPrior(float(held.mean()), float(held.std()), 50, 2.0)
    assert np.mean([drift_rescaled(np.exp(rng.normal(0, 0.5, 5)), tight)[1] != 1.0 for _ in range(400)]) <= 0.12
    # the rescaling itself: mean, std and threshold by the geometric-mean ratio; count unchanged
    p2, r = drift_rescaled([np.e ** 3] * 4, NormalPrior(1.0, 0.0001, 10, 2.0), z=3.0)
    assert r == pytest.approx(np.e ** 3, rel=1e-3) and p2.n == 10 and p2.threshold == pytest.approx(2.0 * r)
    assert p2.mean == pytest.approx(r) and drift_rescaled([5.0], None) == (None, 1.0)
    assert good_log_ratio([np.e ** 3] * 4, NormalPrior(1.0, 0.0001, 10)) == pytest.approx(3.0, abs=1e-6)
    # best-cut uses the labelled images only: never rescaled
    assert choose_threshold([np.e ** 3] * 4, [100.0], NormalPrior(1.0, 0.1, 10, 2.0), "best-cut")["drift_ratio"] == 1.0
