"""Latent replay below one whole latent per task: square crops keep every task in the buffer."""

from __future__ import annotations

import numpy as np
import pytest

from edgead.cl.calibration import CalibrationAnchors
from edgead.cl.config import ReplayConfig
from edgead.cl.crops import MIN_CROP_SIDE, auto_crop_side, random_crop, record_bytes, task_share
from edgead.cl.memory import LatentMemory
from edgead.cl.runner import run_stream
from edgead.data import TaskStream
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig
from firmware_sim.codecs import get_codec
from firmware_sim.replay_buffer import FILE_HEADER_SIZE, TASK_RECORD_SIZE

DET = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
CFG = TrainConfig(epochs=1, batch_size=8, seed=0, progress=False, val_fraction=0.25)
SHAPE = (24, 32, 32)  # MCUNet-in3's latent at 256 px


def test_auto_crop_side_whole_then_crops_then_nothing():
    codec = get_codec("int8-channel")
    whole = record_bytes(codec, SHAPE)
    enough = FILE_HEADER_SIZE + 5 * (TASK_RECORD_SIZE + whole)
    assert auto_crop_side(codec, SHAPE, enough, 5) == 0
    side = auto_crop_side(codec, SHAPE, enough - 1, 5)
    assert MIN_CROP_SIDE <= side < 32
    share = task_share(enough - 1, 5)
    assert record_bytes(codec, (24, side, side)) <= share < record_bytes(codec, (24, side + 1, side + 1))
    assert auto_crop_side(codec, SHAPE, 50_000, 6) >= 16  # a microcontroller budget: every product keeps a crop
    assert auto_crop_side(codec, SHAPE, FILE_HEADER_SIZE + 6 * TASK_RECORD_SIZE + 100, 6) is None


def test_random_crop_is_seeded_and_in_bounds():
    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    a = random_crop(x, 4, np.random.default_rng(1))
    assert a.shape == (2, 4, 4) and a.flags.c_contiguous
    assert np.array_equal(a, random_crop(x, 4, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="crop side 9"):
        random_crop(x, 9, np.random.default_rng(0))


def test_latent_crop_option_is_validated():
    with pytest.raises(EdgeadError, match="--latent-crop 2"):
        ReplayConfig("compressed-replay", "int8-channel", 50_000, latent_crop="2")
    with pytest.raises(EdgeadError, match="--latent-crop big"):
        ReplayConfig("compressed-replay", "int8-channel", 50_000, latent_crop="big")
    r = ReplayConfig("compressed-replay", "int8-channel", 50_000, latent_crop=" AUTO ")
    assert r.latent_crop == "auto" and r.crop_side(SHAPE, 40_000, 6) > 0
    assert ReplayConfig("compressed-replay", "int8-channel", 50_000, latent_crop="none").crop_side(SHAPE, 40_000, 6) == 0
    assert ReplayConfig("compressed-replay", "int8-channel", 50_000, latent_crop="8").crop_side(SHAPE, 10**7, 6) == 8
    assert ReplayConfig("replay", budget_bytes=50_000).crop_side(SHAPE, 40_000, 6) == 0  # images are never cropped
    with pytest.raises(EdgeadError, match="latent crop 40"):
        LatentMemory.new("int8-channel", SHAPE, budget_bytes=10**6, memory_size=None, seed=0, crop_side=40)


def _budget_between(codec: str, side: int, names: list[str], anchors: int) -> int:
    """A budget holding one crop of ``side`` per task but no whole 24x8x8 latent (64 px), anchors included.
    Each task record carries its product name within the task's share: every share pays the longest name."""
    c, n_tasks = get_codec(codec), len(names)
    reserve = CalibrationAnchors(1, (24, 8, 8), 64, 0).reserve_bytes(n_tasks) if anchors else 0
    name = max(len(n.encode("utf-8")) for n in names)
    return reserve + FILE_HEADER_SIZE + n_tasks * (TASK_RECORD_SIZE + name + record_bytes(c, (24, side, side)))


def test_stream_below_one_whole_latent_per_task_replays_crops(synth_root, tmp_path):
    names = ["nut", "brick", "pill"]
    budget = _budget_between("int8-channel", 6, names, anchors=1)
    whole = record_bytes(get_codec("int8-channel"), (24, 8, 8))
    assert budget - CalibrationAnchors(1, (24, 8, 8), 64, 0).reserve_bytes(3) < FILE_HEADER_SIZE + 3 * (
        TASK_RECORD_SIZE + whole)  # no whole latent per task fits
    res = run_stream(TaskStream(synth_root, names), DET, CFG,
                     ReplayConfig("compressed-replay", "int8-channel", budget), tmp_path / "auto", log=lambda m: None)
    mem = res["memory"]
    assert mem["latent_crop"] == [24, 6, 6]
    assert set(mem["buffer_samples"]) == set(names) and all(n >= 1 for n in mem["buffer_samples"].values())
    assert mem["total_bytes"] <= budget
    # less the names' bytes, a 6 x 6 crop and its task's name no longer fit a share: the crop is chosen with
    # the names paid for (5 x 5), so naming a task never evicts its only record
    tight = budget - 3 * max(len(n) for n in names)
    res = run_stream(TaskStream(synth_root, names), DET, CFG,
                     ReplayConfig("compressed-replay", "int8-channel", tight), tmp_path / "tight", log=lambda m: None)
    assert res["memory"]["latent_crop"] == [24, 5, 5]
    assert all(res["memory"]["buffer_samples"][n] >= 1 for n in names) and res["memory"]["total_bytes"] <= tight
    # the same budget with whole latents only: the tasks' shares hold nothing
    res = run_stream(TaskStream(synth_root, names), DET, CFG,
                     ReplayConfig("compressed-replay", "int8-channel", budget, latent_crop="none"),
                     tmp_path / "none", log=lambda m: None)
    assert sum(res["memory"]["buffer_samples"].values()) == 0 and "latent_crop" not in res["memory"]
    assert res["config"]["latent_crop"] == "none"
