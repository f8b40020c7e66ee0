"""`learn --device-buffer`: what a device kept joins the run's memory by product name; a new product becomes a
new task with its own threshold (in the checkpoint an export reads); a buffer of another shape changes nothing."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from edgead.cl.config import ReplayConfig
from edgead.cl.device_merge import merge_device_buffer
from edgead.cl.runner import learn_run, run_stream
from edgead.data import TaskStream
from edgead.engine.checkpoint import load_checkpoint
from edgead.engine.tensors import compute_latents
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig
from firmware_sim.replay_buffer import ReplayBuffer

DET = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
CFG = TrainConfig(epochs=1, batch_size=8, seed=0, progress=False, val_fraction=0.25)
QUIET = dict(log=lambda m: None)


def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _device_buffer(path, run, synth_root, products: dict[str, str], shape_cut: int = 0):
    """A buffer as a device keeps it: trunk latents of normal frames, one named task per product."""
    model, pre, _ = load_checkpoint(run / "checkpoints" / "task_00.pt")
    stream = TaskStream(synth_root, list(products.values()))
    buf = None
    for tid, name in enumerate(products):
        images = stream.tasks[tid].load(pre, val_fraction=0.25, seed=3).train.images[:4]
        z = compute_latents(model, images, pre).cpu().numpy()
        if shape_cut:
            z = np.ascontiguousarray(z[..., :shape_cut, :shape_cut])
        buf = buf or ReplayBuffer(60_000, "int8-channel", seed=1, latent_shape=z.shape[1:])
        buf.name_task(tid, name)
        for k, x in enumerate(z):
            buf.add(tid, x, sample_id=k)
    buf.save(path)
    return path


@pytest.mark.slow
def test_device_products_join_the_run(synth_root, tmp_path):
    run = tmp_path / "run"
    run_stream(TaskStream(synth_root, ["nut"]), DET, CFG, ReplayConfig("compressed-replay", "int8-channel", 20_000),
               run, **QUIET)
    bad = _device_buffer(tmp_path / "other.edgeadrb", run, synth_root, {"brick": "brick"}, shape_cut=4)
    before = _tree(run)
    with pytest.raises(EdgeadError, match=r"another model, backbone.*nothing was merged"):
        merge_device_buffer(run, bad, **QUIET)
    assert _tree(run) == before

    buf = _device_buffer(tmp_path / "dev.edgeadrb", run, synth_root, {"nut": "nut", "gadget": "brick"})
    res = merge_device_buffer(run, buf, **QUIET)
    assert res["tasks"] == ["nut", "gadget"] and res["task_data"][1]["data"] is None
    assert res["metrics"]["image_auroc"]["matrix"][1][1] is None  # no test images: never evaluated
    gadget = res["calibration"]["per_task"]["gadget"]
    assert math.isfinite(gadget["threshold"]) and "device latents" in gadget["threshold_rule"]
    held = res["memory"]["per_task"]
    assert held["gadget"]["samples"] >= 1 and held["nut"]["samples"] >= 1
    assert res["memory"]["total_bytes"] <= 20_000
    assert res["versions"][-1]["merged"] == {"nut": 4, "gadget": 4}
    model, _, _ = load_checkpoint(run / "checkpoints" / "task_01.pt")  # what an export reads
    per = model.calibration.per_task
    assert set(per) == {"nut", "gadget"} and per["gadget"]["threshold"] == pytest.approx(gadget["threshold"])
    saved = ReplayBuffer.load(run / "memory" / "after_task_01.edgeadrb")[0]
    assert sorted(saved.task_names().values()) == ["gadget", "nut"]

    # a later product from images; the device product stays in memory, named
    res = learn_run(run, TaskStream(synth_root, ["pill"]), **QUIET)
    assert res["tasks"] == ["nut", "gadget", "pill"] and set(res["memory"]["per_task"]) == set(res["tasks"])
    # a buffer of known products only: their share of memory in a file of its own, earlier files untouched
    ckpt = _tree(run / "checkpoints")
    res = merge_device_buffer(run, _device_buffer(tmp_path / "d2.edgeadrb", run, synth_root, {"pill": "pill"}),
                              **QUIET)
    assert res["tasks"] == ["nut", "gadget", "pill"] and _tree(run / "checkpoints") == ckpt
    state = json.loads((run / "state.json").read_text())
    assert state["memory_file"] == "memory/after_task_02.v3.edgeadrb"
    res = learn_run(run, TaskStream(synth_root, ["brick"]), **QUIET)  # continues from the merged memory
    assert res["tasks"][-1] == "brick"
