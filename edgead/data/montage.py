"""A picture of a dataset: per category one normal image and defective images with their masks outlined.

Each image is scaled to fit its tile with its aspect ratio kept (grey bars fill the rest) and is labelled
under the tile with its category and defect type.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgead.data.layout import mask_threshold
from firmware_sim.atomic import atomic_write
from firmware_sim.preprocess import load_mask, load_rgb

LABEL_HEIGHT = 14
BACKGROUND = (40, 40, 40)


def _outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def fit_tile(img: Image.Image, mask: np.ndarray | None, tile: int) -> np.ndarray:
    """The image scaled to fit tile x tile with its aspect ratio kept, centred on a dark background, with the
    mask (same size as the image) outlined in red."""
    w, h = img.size
    scale = tile / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(img.resize(size, Image.BILINEAR)).copy()
    if mask is not None:
        m = np.asarray(Image.fromarray((mask > 0).astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        small[_outline(m)] = (255, 0, 0)
    out = np.empty((tile, tile, 3), np.uint8)
    out[:] = BACKGROUND
    y, x = (tile - size[1]) // 2, (tile - size[0]) // 2
    out[y:y + size[1], x:x + size[0]] = small
    return out


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    strip = Image.new("RGB", (tile.shape[1], LABEL_HEIGHT), (255, 255, 255))
    ImageDraw.Draw(strip).text((3, 1), text, fill=(0, 0, 0), font=ImageFont.load_default())
    return np.concatenate([tile, np.asarray(strip)], axis=0)


def save_montage(stream, path: str | Path, tile: int = 128, per_row: int = 5) -> Path:
    """One row per category: a normal image, then one image per defect type (up to per_row in all).

    Args:
        stream: a task stream (MVTec root or folder dataset).
        path: the PNG to write (atomic).
        tile: tile size in pixels (images keep their aspect ratio inside it).
        per_row: images per row.

    Returns:
        The path written.
    """
    rows = []
    for task in stream:
        idx = task.index_files()
        normal = [e for e in idx.test if e.label == 0][:1] or idx.train[:1]
        defects = {}
        for e in idx.test:
            if e.label == 1 and e.defect_type not in defects:
                defects[e.defect_type] = e
        tiles = []
        for e in normal + list(defects.values())[: per_row - 1]:
            img = load_rgb(e.path)
            mask = load_mask(e.mask_path, expected_size=img.size, threshold=mask_threshold(e.mask_path)) if e.mask_path is not None else None
            tiles.append(_label(fit_tile(img, mask, tile), f"{task.name}: {e.defect_type}"))
        tiles += [np.full_like(tiles[0], 255)] * (per_row - len(tiles))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    return atomic_write(path, lambda f: Image.fromarray(grid).save(f, format="PNG"))
