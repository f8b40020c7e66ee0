"""`edgead learn` as a user runs it: a trained run grows by an MVTec category and a folder product; every
version's checkpoint stays readable by `edgead eval`; a refused call leaves the run as it was."""

from __future__ import annotations

import hashlib
import json

import pytest

from edgead.cli import main

SIZE = ("--image-size", "64")
FAST = ("--epochs", "1", "--batch-size", "4", "--quiet")


def _edgead(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_learn_from_the_command_line(synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert _edgead("train", "--data", synth_root, "--tasks", "nut", *SIZE, *FAST, "--strategy",
                   "compressed-replay", "--codec", "int8-channel", "--budget", "20kB", "--out", run) == 0
    assert _edgead("learn", "--run", run, "--data", synth_root, "--tasks", "brick", "--quiet") == 0
    before = _tree(run)
    capsys.readouterr()
    assert _edgead("learn", "--run", run, "--data", synth_root, "--tasks", "brick", "--quiet") == 2
    assert "already has task(s) ['brick']" in capsys.readouterr().err
    assert _edgead("learn", "--run", tmp_path / "nothing", "--data", synth_root, "--tasks", "pill") == 2
    assert "not an edgead run folder" in capsys.readouterr().err
    assert _tree(run) == before
    pill = synth_root / "pill"
    assert _edgead("learn", "--run", run, "--normal", pill / "train" / "good", "--abnormal",
                   pill / "test" / "crack", "--name", "pill2", "--epochs", "2", "--quiet") == 0
    res = json.loads((run / "results.json").read_text())
    assert res["tasks"] == ["nut", "brick", "pill2"]
    assert [len(r) for r in res["metrics"]["image_auroc"]["matrix"]] == [3, 3, 3]
    assert res["versions"][2]["epochs"] == 2 and res["versions"][1]["epochs"] == 1
    assert res["task_data"][2]["data"] == str(run / "datasets" / "v2.yaml")
    assert set(res["memory"]["per_task"]) == {"nut", "brick", "pill2"}
    from firmware_sim.replay_buffer import ReplayBuffer

    buf, _ = ReplayBuffer.load(run / "memory" / "after_task_02.edgeadrb")
    assert sorted(buf.task_names().values()) == ["brick", "nut", "pill2"]  # every product named in the file
    # an earlier version's checkpoint is evaluated on the tasks it had seen, each from its own data
    assert _edgead("eval", "--run", run, "--task", "1") == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["tasks"] == ["nut", "brick"]
    assert ev["metrics"]["brick"]["image_auroc"] == pytest.approx(res["metrics"]["image_auroc"]["matrix"][1][1])
