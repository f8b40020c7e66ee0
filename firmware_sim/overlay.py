"""An anomaly map over its image as a PNG: what an operator looks at next to the score."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from firmware_sim.atomic import atomic_write

# A short blue -> cyan -> yellow -> red ramp: enough to read a heat map, no matplotlib on the device.
_STOPS = np.array([[0, 0, 128], [0, 160, 255], [255, 230, 0], [220, 0, 0]], np.float32)


def colorize(v: np.ndarray) -> np.ndarray:
    """(H, W) values in 0..1 -> (H, W, 3) uint8."""
    x = np.clip(v, 0.0, 1.0) * (len(_STOPS) - 1)
    i = np.minimum(x.astype(np.intp), len(_STOPS) - 2)
    w = (x - i)[..., None]
    return np.rint(_STOPS[i] * (1 - w) + _STOPS[i + 1] * w).astype(np.uint8)


def save_overlay(path: str | os.PathLike, pixels: np.ndarray, normalized_map: np.ndarray, alpha: float = 0.5) -> Path:
    """pixels (S, S, 3) uint8 as the model saw them; normalized_map (S, S) 0..1 (0.5 = the threshold)."""
    heat = colorize(normalized_map).astype(np.float32)
    img = np.rint(pixels.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)
    return atomic_write(path, lambda f: Image.fromarray(img).save(f, format="PNG"))
