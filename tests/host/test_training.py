"""Training over a task stream: determinism, resume, replay memories within budget, early errors."""

from __future__ import annotations

import json

import pytest

from edgead.cl import learner as runner_mod
from edgead.cl.config import ReplayConfig
from edgead.cl.runner import run_stream
from edgead.data import TaskStream
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig
from firmware_sim.replay_buffer import ReplayBuffer

DET = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)


def _cfg(**kw):
    base = dict(epochs=2, batch_size=8, seed=0, progress=False, val_fraction=0.25)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(res):
    return {k: v["matrix"] for k, v in res["metrics"].items()}


def test_single_task_results_and_determinism(synth_root, tmp_path):
    stream = TaskStream(synth_root, ["nut"])
    a = run_stream(stream, DET, _cfg(), ReplayConfig(), tmp_path / "a", log=lambda m: None)
    b = run_stream(stream, DET, _cfg(), ReplayConfig(), tmp_path / "b", log=lambda m: None)
    assert _metrics(a) == _metrics(b)  # deterministic for a seed on CPU
    for key in ("image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_ap", "aupro"):
        v = a["metrics"][key]["final_average"]
        assert 0.0 <= v <= 1.0
    assert a["memory"]["additional_bytes"] == 0
    assert a["memory"]["architecture_bytes"]["fp32"] == 4 * a["memory"]["params"]["total"]
    assert (tmp_path / "a" / "checkpoints" / "task_00.pt").is_file()
    assert len(a["timings"]["per_task"][0]["epoch_seconds"]) == 2


def test_resume_after_kill_matches_uninterrupted(synth_root, tmp_path, monkeypatch):
    stream = TaskStream(synth_root, ["nut", "brick"])
    replay = ReplayConfig("compressed-replay", "int8-channel", budget_bytes=200_000)
    kw = dict(log=lambda m: None)
    full = run_stream(stream, DET, _cfg(), replay, tmp_path / "full", **kw)

    calls = {"n": 0}
    real = runner_mod.train_task

    def dies_on_second_task(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(runner_mod, "train_task", dies_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        run_stream(stream, DET, _cfg(), replay, tmp_path / "cut", **kw)
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert state["completed_tasks"] == 1
    monkeypatch.setattr(runner_mod, "train_task", real)
    with pytest.raises(EdgeadError, match="already holds a run"):
        run_stream(stream, DET, _cfg(), replay, tmp_path / "cut", **kw)
    with pytest.raises(EdgeadError, match="configuration differs"):
        run_stream(stream, DET, _cfg(epochs=3), replay, tmp_path / "cut", resume=True, **kw)
    resumed = run_stream(stream, DET, _cfg(), replay, tmp_path / "cut", resume=True, **kw)
    assert _metrics(resumed) == _metrics(full)
    assert resumed["memory"] == full["memory"]


def test_compressed_replay_stays_in_budget_and_writes_device_format(synth_root, tmp_path):
    stream = TaskStream(synth_root, ["nut", "brick", "pill"])
    budget = 150_000
    res = run_stream(stream, DET, _cfg(epochs=1), ReplayConfig("compressed-replay", "int8-channel", budget),
                     tmp_path / "r", log=lambda m: None)
    mem = res["memory"]
    assert 0 < mem["additional_bytes"] <= budget
    counts = list(mem["buffer_samples"].values())
    assert len(counts) == 3 and max(counts) - min(counts) <= 1  # shared equally among tasks
    buf, report = ReplayBuffer.load(tmp_path / "r" / "memory" / "after_task_02.edgeadrb")
    assert report.dropped == 0 and buf.nbytes == mem["additional_bytes"]
    m = res["metrics"]["image_auroc"]["matrix"]
    assert len(m) == 3 and m[0][1] is None and all(v is not None for v in m[2])


def test_image_replay_counts_raw_bytes(synth_root, tmp_path):
    stream = TaskStream(synth_root, ["nut", "brick"])
    res = run_stream(stream, DET, _cfg(epochs=1), ReplayConfig("replay", memory_size=6), tmp_path / "r",
                     log=lambda m: None)
    assert res["memory"]["additional_bytes"] == 6 * 64 * 64 * 3
    assert sorted(res["memory"]["buffer_samples"].values()) == [3, 3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="compressed-replay", codec="int8-channel", budget_bytes=1000), "too small"),
        (dict(strategy="replay", budget_bytes=1000), "smaller than one"),
        (dict(strategy="finetune", codec="int8-channel"), "applies only to"),
        (dict(strategy="compressed-replay", codec="zip"), "codec"),
        (dict(strategy="sgd"), "unknown strategy"),
    ],
)
def test_bad_configuration_fails_before_training(synth_root, tmp_path, kwargs, message):
    stream = TaskStream(synth_root, ["nut"])
    with pytest.raises(Exception, match=message) as e:
        run_stream(stream, DET, _cfg(), ReplayConfig(**kwargs), tmp_path / "x", log=lambda m: None)
    assert isinstance(e.value, EdgeadError) or type(e.value).__name__ == "UserError"
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_compressed_replay_needs_paste(synth_root, tmp_path):
    det = DetectorConfig.defaults("stfpm", "mcunet-in3", image_size=64)
    with pytest.raises(EdgeadError, match="needs --model paste"):
        run_stream(TaskStream(synth_root, ["nut"]), det, _cfg(), ReplayConfig("compressed-replay"), tmp_path / "x")


def test_host_continues_from_a_device_buffer(synth_root, tmp_path):
    """Latents a device kept as the trunk's int8 output are replayed, and the new task joins the same file."""
    import numpy as np
    import torch

    from edgead.data import TaskStream as TS
    from edgead.engine.tensors import compute_latents
    from edgead.models.teacher_student import TeacherStudent
    from firmware_sim.preprocess import Preprocess

    model = TeacherStudent(DET)
    first = TS(synth_root, ["nut"]).tasks[0].load(Preprocess(image_size=64))
    z = compute_latents(model, first.train.images, Preprocess(image_size=64)).numpy()
    scale = float(np.abs(z).max() / 127)
    device = ReplayBuffer(60_000, "int8-device", seed=0)
    for k, x in enumerate(z):
        device.add_quantized(0, np.clip(np.rint(x / scale), -128, 127).astype(np.int8), scale, 0, k)
    device.save(tmp_path / "device.edgeadrb")
    torch.manual_seed(0)
    replay = ReplayConfig("compressed-replay", device_buffer=tmp_path / "device.edgeadrb", budget_bytes=60_000)
    res = run_stream(TS(synth_root, ["brick"]), DET, _cfg(epochs=1), replay, tmp_path / "r", log=lambda m: None)
    samples = res["memory"]["buffer_samples"]
    assert set(samples) == {"device-task-1", "brick"} and all(n > 0 for n in samples.values())
    back, _ = ReplayBuffer.load(tmp_path / "r" / "memory" / "after_task_00.edgeadrb")
    assert back.codec.name == "int8-device" and back.tasks == [0, 1] and back.nbytes <= 60_000
