"""A picture of a dataset: per category one normal image and defective images with their masks outlined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgead.data.loading import load_entries
from firmware_sim.atomic import atomic_write
from firmware_sim.preprocess import Preprocess


def _outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def save_montage(stream, path: str | Path, tile: int = 128, per_row: int = 5) -> Path:
    pre = Preprocess(image_size=tile)
    rows = []
    for task in stream:
        idx = task.index_files()
        normal = [e for e in idx.test if e.label == 0][:1] or idx.train[:1]
        defects = {}
        for e in idx.test:
            if e.label == 1 and e.defect_type not in defects:
                defects[e.defect_type] = e
        split = load_entries(normal + list(defects.values())[: per_row - 1], pre)
        tiles = []
        for img, mask in zip(split.images, split.masks, strict=True):
            t = img.copy()
            t[_outline(mask)] = (255, 0, 0)
            tiles.append(t)
        tiles += [np.zeros_like(tiles[0])] * (per_row - len(tiles))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    return atomic_write(path, lambda f: Image.fromarray(grid).save(f, format="PNG"))
