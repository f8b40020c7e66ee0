"""--recalibrate refit: earlier tasks' thresholds re-fitted from their held-out normals' stored trunk latents."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgead.cl.calibration_set import CalibrationSet
from edgead.cl.config import ReplayConfig
from edgead.cl.runner import learn_run, run_stream
from edgead.data import TaskStream
from edgead.engine.evaluate import fit_calibration
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig, TeacherStudent
from firmware_sim.preprocess import Preprocess

DET = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
CFG = TrainConfig(epochs=1, batch_size=8, seed=0, progress=False, val_fraction=0.25)
RULE = "pseudo-band:0.7,0.1"


def _normals(root, name: str, pre: Preprocess) -> np.ndarray:
    data = TaskStream(root, [name]).tasks[0].load(pre, val_fraction=0.5, seed=0)
    return np.concatenate([data.train.images, data.val.images])[:12]


def _perturb_student(model: TeacherStudent, scale: float) -> None:
    with torch.no_grad():
        for p in model.student_tail.parameters():
            p.mul_(scale)


def test_refit_ratio_follows_the_oracle_and_survives_a_save(synth_root, tmp_path):
    """The stored set's refit moves the fitted threshold to where the rule on the images themselves lands."""
    torch.manual_seed(0)
    model = TeacherStudent(DET)
    pre = Preprocess(image_size=DET.image_size)
    images = _normals(synth_root, "nut", pre)
    fit = fit_calibration(model, images, pre, rule=RULE, seed=0).threshold
    calset = CalibrationSet(RULE, DET.image_size)
    calset.add(0, model, images, pre)
    assert calset.ratio(model, 0) == pytest.approx(1.0)  # same model, same latents: no drift
    # 12 normals and 2 pseudo-defects each, one int8-channel latent apiece
    assert len(calset.normals[0]) == 12 and len(calset.pseudo[0]) == 24
    assert calset.nbytes == sum(e.nbytes for e in calset.normals[0] + calset.pseudo[0])
    _perturb_student(model, 1.15)  # a student that drifted
    oracle = fit_calibration(model, images, pre, rule=RULE, seed=0).threshold
    refit = fit * calset.ratio(model, 0)
    assert oracle != pytest.approx(fit, rel=0.05)  # the drift is real ...
    assert refit == pytest.approx(oracle, rel=0.05)  # ... and the stored int8 latents follow it
    calset.save(tmp_path / "set.npz")
    back = CalibrationSet(RULE, DET.image_size)
    back.load(tmp_path / "set.npz")
    assert back.ratio(model, 0) == pytest.approx(calset.ratio(model, 0), rel=1e-9)
    assert back.nbytes == calset.nbytes


def test_stream_with_refit_records_it_and_learns_on_the_same_way(synth_root, tmp_path):
    names = ["nut", "brick"]
    replay = ReplayConfig("compressed-replay", "int8-channel", 60_000, recalibrate="refit")
    res = run_stream(TaskStream(synth_root, names), DET, CFG, replay, tmp_path / "one", log=lambda m: None)
    cal, mem = res["calibration"], res["memory"]
    assert cal["method"] == "refit" and res["config"]["recalibrate"] == "refit"
    first = cal["per_task"]["nut"]
    assert math.isfinite(first["drift_ratio"]) and first["threshold"] == pytest.approx(
        first["fit_threshold"] * first["drift_ratio"])
    # host memory outside the budget: counted as calibration bytes, never in the replay memory's
    assert mem["calibration_set_bytes"] > 0 and mem["additional_bytes"] <= 60_000
    assert mem["calibration_bytes"] == mem["calibration_set_bytes"] + cal["bytes"]
    assert (tmp_path / "one" / "calibration" / "set_after_task_01.npz").is_file()
    # the same tasks one call at a time (the refit set is saved and restored between them): same thresholds
    run_stream(TaskStream(synth_root, names[:1]), DET, CFG, replay, tmp_path / "two", log=lambda m: None)
    two = learn_run(tmp_path / "two", TaskStream(synth_root, names[1:]), log=lambda m: None)
    assert two["calibration"]["per_task"]["nut"]["threshold"] == pytest.approx(first["threshold"], rel=1e-6)


def test_refit_is_refused_by_name():
    with pytest.raises(EdgeadError, match="--recalibrate 'sometimes'"):
        ReplayConfig("compressed-replay", "int8-channel", 60_000, recalibrate="sometimes")
