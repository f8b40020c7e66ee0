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
              "false_alarm_rate": 0.0, "catch_rate": 1.0, "balanced_accuracy": 1.0, "ceiling": 1.0}
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
