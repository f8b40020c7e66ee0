"""`edgead calibrate`: a product's threshold in a run from a few labelled images, the same choice as the device's;
the checkpoint rewritten with the old threshold in its history; bad input writes nothing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import two_task_run


def _edgead(argv: list[str]) -> int:
    from edgead.cli import main

    try:
        main(argv)
    except SystemExit as e:
        return 0 if e.code is None else int(e.code)
    return 0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """Two products trained by `edgead train` at 64 px (the session's, shared with the device's calibrate
    tests: tests/conftest.py); copied before a test changes it."""
    return two_task_run(tmp_path_factory)


def _labelled(data: Path, task: str, dest: Path) -> tuple[Path, Path]:
    good, bad = dest / "good", dest / "bad"
    shutil.copytree(data / task / "test" / "good", good)
    bad.mkdir(parents=True)
    for d in sorted((data / task / "test").iterdir()):
        if d.name != "good":
            for f in sorted(d.iterdir()):
                shutil.copy(f, bad / f"{d.name}_{f.name}")
    return good, bad


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_calibrate_rewrites_the_task_threshold_with_history(run, tmp_path, capsys):
    from edgead.engine.checkpoint import load_checkpoint
    from edgead.predict import checkpoint_of, load_host_detector, predict_run
    from firmware_sim.decisions import NormalPrior, choose_threshold

    r = tmp_path / "run"
    shutil.copytree(run["run"], r)
    good, bad = _labelled(run["data"], "brick", tmp_path / "brick")
    ckpt = checkpoint_of(r)[0]
    before = load_checkpoint(ckpt)[0].calibration
    old = before.per_task["brick"]
    assert _edgead(["calibrate", "--run", str(r), "--task", "brick", "--normal", str(good), "--defect",
                    str(bad)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    after = load_checkpoint(ckpt)[0].calibration
    brick = after.per_task["brick"]
    assert brick["threshold"] == pytest.approx(out["threshold"]) and out["old_threshold"] == old["threshold"]
    assert brick["extra"]["history"][0]["threshold"] == old["threshold"]
    assert brick["extra"]["labelled"]["n_defect"] == len(list(bad.iterdir()))
    assert after.per_task["nut"]["threshold"] == before.per_task["nut"]["threshold"]
    assert after.threshold == pytest.approx(max(c["threshold"] for c in after.per_task.values()))
    # the host's choice is the device's function on the host's scores
    det = load_host_detector(r)
    det.use_task("brick")
    scores = [det.infer(p).score for p in sorted(good.iterdir())]
    expect = choose_threshold(scores, [det.infer(p).score for p in sorted(bad.iterdir())],
                              NormalPrior.from_calibration(old), out["method"])
    assert out["method"] == "anchored" and out["anchor_threshold"] == pytest.approx(old["threshold"])
    assert expect["threshold"] == pytest.approx(out["threshold"], rel=1e-6)
    # predict decides with it; results.json records it
    summary = predict_run(r, good, task="brick")
    assert summary["threshold"] == pytest.approx(out["threshold"])
    res = json.loads((r / "results.json").read_text())
    assert res["calibration"]["per_task"]["brick"]["threshold"] == pytest.approx(out["threshold"])
    assert res["calibration"]["labelled"][-1]["old_threshold"] == old["threshold"]
    # calibrating again with the same images: anchored on the threshold set without labels (kept in the
    # history), not on the labelled one, so the same threshold again
    assert _edgead(["calibrate", "--run", str(r), "--task", "brick", "--normal", str(good), "--defect",
                    str(bad)]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["old_threshold"] == pytest.approx(out["threshold"])
    assert again["anchor_threshold"] == pytest.approx(old["threshold"])
    assert again["threshold"] == pytest.approx(out["threshold"], rel=1e-9)


@pytest.mark.parametrize("case", ["empty-normal", "one-class", "unknown-task", "no-task", "not-a-run"])
def test_bad_input_is_a_clear_error_and_writes_nothing(run, tmp_path, capsys, case):
    r = tmp_path / "run"
    shutil.copytree(run["run"], r)
    good, bad = _labelled(run["data"], "nut", tmp_path / "nut")
    args = {"--run": str(r), "--task": "nut", "--normal": str(good), "--defect": str(bad)}
    expect = {"empty-normal": "--normal .*no image files", "one-class": "share .* image",
              "unknown-task": "'screw': not a task of .*its tasks: nut, brick",
              "no-task": "one threshold per product; say which with --task",
              "not-a-run": "results.json"}[case]
    if case == "empty-normal":
        (tmp_path / "empty").mkdir()
        args["--normal"] = str(tmp_path / "empty")
    elif case == "one-class":
        args["--defect"] = str(good)
    elif case == "unknown-task":
        args["--task"] = "screw"
    elif case == "no-task":
        del args["--task"]
    elif case == "not-a-run":
        args["--run"] = str(tmp_path / "nut")
    before = _files(r)
    assert _edgead(["calibrate", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(expect, err), err
    assert _files(r) == before


def test_relabelled_keeps_every_earlier_threshold():
    from edgead.cli.calibrate import relabelled
    from edgead.models.teacher_student import Calibration

    result = {"threshold": 0.3, "method": "best-cut", "note": None, "n_normal": 2, "n_defect": 1,
              "false_alarm_rate": 0.0, "catch_rate": 1.0, "balanced_accuracy": 1.0, "ceiling": 1.0,
              "drift_ratio": 1.0}
    c = relabelled(Calibration(threshold=0.5, n_images=9), result, "t1")
    c = relabelled(c, {**result, "threshold": 0.4}, "t2")
    assert c.threshold == 0.4 and [h["threshold"] for h in c.extra["history"]] == [0.5, 0.3]
    assert c.extra["history"][1]["labelled"]["method"] == "best-cut" and np.isnan(c.score_mean)


def test_eval_and_train_tables_report_decisions_and_the_ceiling(run, tmp_path):
    from edgead.cl.evaluate_run import evaluate_run
    from edgead.cli.tables import decision_table, format_decisions

    r = tmp_path / "run"
    shutil.copytree(run["run"], r)
    res = evaluate_run(r)
    for task in ("nut", "brick"):
        d = res["decisions"]["per_task"][task]
        assert d["n_normals"] == 3 and "fewer than 20" in d["warning"]  # 25 % of 12 normals held out
        assert 0.0 <= d["false_alarm_rate"] <= 1.0 and 0.0 <= d["catch_rate"] <= 1.0
        assert d["balanced_accuracy"] <= d["ceiling"] + 1e-12 and d["gap"] == pytest.approx(
            d["ceiling"] - d["balanced_accuracy"])
    text = format_decisions(res)
    assert "ceiling" in text and "evaluation only" in text and text.count("warning: ") == 2
    # results.json of the run: the same statistics after the last task, the ceiling where the issue asks for it
    saved = json.loads((r / "results.json").read_text())["deployed"]
    for task in ("nut", "brick"):
        assert saved["balanced_accuracy"]["per_task"][task]["ceiling"] == pytest.approx(
            res["decisions"]["per_task"][task]["ceiling"])
    lines = decision_table(saved["decisions"]["per_task"], saved["decisions"]["final_average"]).splitlines()
    assert lines[1].split()[:3] == ["task", "threshold", "normals"] and lines[2].startswith("nut")

