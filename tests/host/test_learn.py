"""`learn`: a finished run grows by new tasks, one call at a time, and ends where one call over the whole
stream ends; the memory is re-shared among the tasks seen; bad input leaves the run byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from edgead.cl.config import ReplayConfig
from edgead.cl.runner import learn_run, run_stream
from edgead.data import TaskStream
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig

DET = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
CFG = TrainConfig(epochs=1, batch_size=8, seed=0, progress=False, val_fraction=0.25)
QUIET = dict(log=lambda m: None)
# 10 kB of int8-channel latents at 64 px (24 x 8 x 8 each): whole latents while two products share it, crops
# once the third's anchor and share arrive, so re-sharing and re-cropping are both exercised.
STRATEGIES = {"finetune": ReplayConfig(), "replay": ReplayConfig("replay", memory_size=6),
              "compressed-replay": ReplayConfig("compressed-replay", "int8-channel", 10_000)}


def _numbers(res: dict) -> dict:
    return {"metrics": {k: v["matrix"] for k, v in res["metrics"].items()},
            "calibration": res["calibration"]["per_task"], "deployed": res["deployed"]["per_task"],
            "memory": {k: res["memory"].get(k) for k in ("additional_bytes", "buffer_samples", "per_task",
                                                          "after_task", "latent_crop", "calibration_bytes")}}


def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_learning_one_task_at_a_time_equals_one_stream(synth_root, tmp_path, strategy):
    replay = STRATEGIES[strategy]
    whole = run_stream(TaskStream(synth_root, ["nut", "brick", "pill"]), DET, CFG, replay, tmp_path / "whole",
                       **QUIET)
    run_stream(TaskStream(synth_root, ["nut"]), DET, CFG, replay, tmp_path / "grown", **QUIET)
    learn_run(tmp_path / "grown", TaskStream(synth_root, ["brick"]), **QUIET)
    grown = learn_run(tmp_path / "grown", TaskStream(synth_root, ["pill"]), **QUIET)
    assert _numbers(grown) == _numbers(whole)
    assert grown["tasks"] == ["nut", "brick", "pill"] and len(grown["versions"]) == 3
    assert [v["tasks"] for v in grown["versions"]] == [["nut"], ["brick"], ["pill"]]
    if strategy != "finetune":  # what each product held when each version was done
        assert [list(v["memory_after"]) for v in grown["versions"]] == [["nut"], ["nut", "brick"],
                                                                         ["nut", "brick", "pill"]]
    # every version's checkpoint stays readable
    assert sorted(p.name for p in (tmp_path / "grown" / "checkpoints").iterdir()) == [
        "task_00.pt", "task_01.pt", "task_02.pt"]


def test_memory_is_reshared_as_products_arrive(synth_root, tmp_path):
    budget = STRATEGIES["compressed-replay"].budget_bytes
    res = run_stream(TaskStream(synth_root, ["nut", "brick", "pill"]), DET, CFG, STRATEGIES["compressed-replay"],
                     tmp_path / "r", **QUIET)
    after = res["memory"]["after_task"]
    assert [list(a) for a in after] == [["nut"], ["nut", "brick"], ["nut", "brick", "pill"]]
    anchor = res["calibration"]["bytes"] // 3
    for k, a in enumerate(after):  # within the budget of that moment: the anchors of the products seen so far
        assert sum(h["bytes"] for h in a.values()) + 512 <= budget - (k + 1) * anchor
        assert all(h["samples"] >= 1 for h in a.values())  # every product keeps something
    # two products: whole latents; three: crops, re-chosen for every record, one shape in the buffer
    assert after[1]["nut"]["crop"] is None and after[2]["nut"]["crop"] == after[2]["pill"]["crop"]
    assert after[2]["pill"]["crop"][1] < 8
    assert after[2]["nut"]["samples"] < after[0]["nut"]["samples"]  # evicted to make room, fairly
    assert res["memory"]["total_bytes"] <= budget


def _finished_run(synth_root, tmp_path):
    out = tmp_path / "run"
    run_stream(TaskStream(synth_root, ["nut"]), DET, CFG, STRATEGIES["compressed-replay"], out, **QUIET)
    return out


def test_bad_input_leaves_the_run_unchanged(synth_root, tmp_path):
    out = _finished_run(synth_root, tmp_path)
    before = _tree(out)
    with pytest.raises(EdgeadError, match="not an edgead run folder"):
        learn_run(tmp_path, TaskStream(synth_root, ["brick"]), **QUIET)
    with pytest.raises(EdgeadError, match=r"already has task\(s\) \['nut'\]"):
        learn_run(out, TaskStream(synth_root, ["brick", "nut"]), **QUIET)
    with pytest.raises(EdgeadError, match="--codec int4-channel: .* trained with int8-channel.*new run"):
        learn_run(out, TaskStream(synth_root, ["brick"]), fixed={"codec": "int4-channel", "model": "paste"}, **QUIET)
    with pytest.raises(EdgeadError, match="--image-size 128: .* trained with 64"):
        learn_run(out, TaskStream(synth_root, ["brick"]), fixed={"image_size": 128}, **QUIET)
    with pytest.raises(EdgeadError, match="never lower"):
        learn_run(out, TaskStream(synth_root, ["brick"]), budget_bytes=7_000, **QUIET)
    with pytest.raises(EdgeadError, match="nothing to resume"):
        learn_run(out, resume=True, **QUIET)
    assert _tree(out) == before
    # a run killed mid-task: say to resume first
    state = json.loads((out / "state.json").read_text())
    state["config"]["tasks"].append("brick")
    (out / "state.json").write_text(json.dumps(state))
    with pytest.raises(EdgeadError, match="stopped during task 2 \\(brick\\).*--resume"):
        learn_run(out, TaskStream(synth_root, ["pill"]), **QUIET)


def test_unreachable_earlier_task_keeps_its_anchor_threshold(synth_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_root / "nut", data / "nut")
    shutil.copytree(synth_root / "brick", tmp_path / "later" / "brick")
    out = tmp_path / "run"
    run_stream(TaskStream(data, ["nut"]), DET, CFG, STRATEGIES["compressed-replay"], out, **QUIET)
    shutil.rmtree(data)  # the first product's images are gone months later
    lines = []
    res = learn_run(out, TaskStream(tmp_path / "later", ["brick"]), budget_bytes=12_000, epochs=2, log=lines.append)
    assert res["metrics"]["image_auroc"]["matrix"][1][0] is None and res["metrics"]["image_auroc"]["matrix"][1][1]
    assert any("nut: not evaluated" in m for m in lines)
    nut = res["calibration"]["per_task"]["nut"]
    assert nut["drift_ratio"] > 0  # recalibrated from its anchor all the same
    assert res["versions"][1]["epochs"] == 2 and res["versions"][1]["budget_bytes"] == 12_000
    assert res["task_data"][1]["data"] == str((tmp_path / "later").resolve())


@pytest.mark.slow
def test_a_killed_learn_resumes_to_the_same_numbers(synth_root, tmp_path, monkeypatch):
    """learn b,c killed during c: a plain learn is refused (resume first); Detector.learn(resume=True) ends
    where one call over nut, brick, pill ends."""
    from edgead import Detector
    from edgead.cl import learner as learner_mod

    whole = run_stream(TaskStream(synth_root, ["nut", "brick", "pill"]), DET, CFG, ReplayConfig(), tmp_path / "w",
                       **QUIET)
    run_stream(TaskStream(synth_root, ["nut"]), DET, CFG, ReplayConfig(), tmp_path / "r", **QUIET)
    real, calls = learner_mod.train_task, {"n": 0}

    def dies_on_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(learner_mod, "train_task", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        learn_run(tmp_path / "r", TaskStream(synth_root, ["brick", "pill"]), **QUIET)
    monkeypatch.setattr(learner_mod, "train_task", real)
    with pytest.raises(EdgeadError, match=r"stopped during task 3 \(pill\).*--resume"):
        learn_run(tmp_path / "r", TaskStream(synth_root, ["pill"]), **QUIET)
    resumed = Detector.load(tmp_path / "r").learn(resume=True)
    assert _numbers(resumed) == _numbers(whole)


def test_calibrations_saved_with_an_extra_dict_still_read():
    """Checkpoints and results written before the typed fields kept them in `extra`: both forms read the same."""
    from dataclasses import asdict

    from edgead.models.teacher_student import Calibration

    stats = dict(threshold=2.0, score_mean=1.0, score_std=0.5, score_min=0.1, score_max=3.0, quantile=0.9,
                 n_images=8)
    old = {**stats, "extra": {"rule": "max", "history": [{"threshold": 1.5}],
                              "per_task": {"nut": {**stats, "extra": {"drift_ratio": 1.25, "fit_threshold": 1.6,
                                                                      "threshold_rule": "pseudo-f1"}}}}}
    c = Calibration.from_dict(old)
    assert c.rule == "max" and c.extra == {"history": [{"threshold": 1.5}]} and list(c.per_task) == ["nut"]
    nut = Calibration.from_dict(c.per_task["nut"])
    assert (nut.drift_ratio, nut.fit_threshold, nut.threshold_rule, nut.extra) == (1.25, 1.6, "pseudo-f1", {})
    assert Calibration.from_dict(asdict(c)) == c  # the typed form round-trips
    assert c.described() == {"rule": "max", "history": [{"threshold": 1.5}]}  # what the manifest carries
