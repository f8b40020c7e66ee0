"""Square crops of frozen-trunk latents: what is kept when a whole latent is too big.

Two users: the calibration anchors (a small crop per task, never replayed) and latent replay below one whole
latent per task. A 256 px image gives MCUNet-in3 a 24 x 32 x 32 latent, about 25 kB in int8-channel; at
microcontroller budgets (50-150 kB for five or six products) a task's equal share holds no whole latent, and a
buffer that keeps nothing replays nothing. The teacher tail and the student are fully convolutional, so a
crop of a latent is itself a valid input: the student learns to match the teacher on it as on a whole map
(only the crop's border sees zero padding where the whole map had neighbours). A 16 x 16 crop costs a quarter
of the whole, so every product keeps something.

``auto_crop_side`` makes the choice: the whole latent when one fits in every task's share, else the largest
square crop that does (at least MIN_CROP_SIDE), else None (the budget is too small for any record).
"""

from __future__ import annotations

import numpy as np

from firmware_sim.codecs import Codec
from firmware_sim.replay_buffer import FILE_HEADER_SIZE, RECORD_OVERHEAD, TASK_RECORD_SIZE

MIN_CROP_SIDE = 4  # below 4 x 4 cells the deepest teacher level (stride 4 over the latent) sees one cell


def random_crop(x: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A ``side`` x ``side`` crop of a (C, H, W) array at a seeded random position (contiguous copy)."""
    h, w = x.shape[-2:]
    if not 1 <= side <= min(h, w):
        raise ValueError(f"crop side {side} outside 1..{min(h, w)} for a latent of {h} x {w}")
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return np.ascontiguousarray(x[..., y0:y0 + side, x0:x0 + side])


def record_bytes(codec: Codec, shape: tuple[int, ...]) -> int:
    """Bytes one sample of ``shape`` takes in a replay buffer file (record header and CRC included)."""
    return RECORD_OVERHEAD + codec.bytes_per_sample(tuple(shape))


def task_share(budget_bytes: int, n_tasks: int, name_bytes: int = 0) -> int:
    """Sample bytes of one task's equal share of a buffer (its task record left out, with ``name_bytes`` of
    product name: a named task's record carries its name and its share pays for it)."""
    return (budget_bytes - FILE_HEADER_SIZE) // max(n_tasks, 1) - TASK_RECORD_SIZE - name_bytes


def auto_crop_side(codec: Codec, latent_shape: tuple[int, ...], budget_bytes: int, n_tasks: int,
                   name_bytes: int = 0) -> int | None:
    """0 for whole latents (one fits in every task's share); else the largest square crop side that fits;
    None when not even a MIN_CROP_SIDE crop fits. ``name_bytes``: the longest task name (UTF-8 bytes) the
    shares pay for, so that a crop chosen here still fits once its task is named."""
    share = task_share(budget_bytes, n_tasks, name_bytes)
    c, h, w = latent_shape
    if record_bytes(codec, latent_shape) <= share:
        return 0
    for side in range(min(h, w) - 1, MIN_CROP_SIDE - 1, -1):
        if record_bytes(codec, (c, side, side)) <= share:
            return side
    return None
