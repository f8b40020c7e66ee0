"""An anomaly map over its image as a PNG: what an operator looks at next to the score.

Below the image: the colour bar of the normalised map (0 left, 1 right, a tick at 0.5 = the threshold) and
the image's score, its normalised value and the decision.

Overlay files are named after their image so that each JSON line points to its own file (`OverlayNames`):
the image's folders below --images are kept as folders, a .png keeps its name and any other image keeps its
suffix in the name (`a.jpg` -> `a.jpg.png`, beside `a.png` -> `a.png`), and a name already taken in this run
(`a.png` and `a.PNG`) gets a counter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from firmware_sim.atomic import atomic_write

# A short blue -> cyan -> yellow -> red ramp: enough to read a heat map, no matplotlib on the device.
_STOPS = np.array([[0, 0, 128], [0, 160, 255], [255, 230, 0], [220, 0, 0]], np.float32)
MIN_WIDTH = 176  # room for the legend text under small (64 px) images
BAR_HEIGHT = 10
TEXT_HEIGHT = 14


def colorize(v: np.ndarray) -> np.ndarray:
    """(H, W) values in 0..1 -> (H, W, 3) uint8."""
    x = np.clip(v, 0.0, 1.0) * (len(_STOPS) - 1)
    i = np.minimum(x.astype(np.intp), len(_STOPS) - 2)
    w = (x - i)[..., None]
    return np.rint(_STOPS[i] * (1 - w) + _STOPS[i + 1] * w).astype(np.uint8)


def _legend(width: int, score: float | None, normalized: float | None, anomalous: bool | None) -> Image.Image:
    """A colour bar 0..1 with the threshold (0.5) marked, and one line of text with the score."""
    strip = Image.new("RGB", (width, BAR_HEIGHT + 2 * TEXT_HEIGHT), (255, 255, 255))
    bar = colorize(np.tile(np.linspace(0.0, 1.0, width - 8, dtype=np.float32), (BAR_HEIGHT, 1)))
    strip.paste(Image.fromarray(bar), (4, 2))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    mid = 4 + (width - 8) // 2
    draw.line([(mid, 0), (mid, BAR_HEIGHT + 3)], fill=(0, 0, 0), width=1)
    y = BAR_HEIGHT + 3
    draw.text((4, y), "0", fill=(0, 0, 0), font=font)
    draw.text((mid - 14, y), "thr", fill=(0, 0, 0), font=font)
    draw.text((width - 12, y), "1", fill=(0, 0, 0), font=font)
    if score is not None:
        parts = [f"score {score:.4g}"]
        if normalized is not None and np.isfinite(normalized):
            parts.append(f"({normalized:.2f})")
        if anomalous is not None:
            parts.append("ANOMALOUS" if anomalous else "normal")
        draw.text((4, y + TEXT_HEIGHT), " ".join(parts), fill=(200, 0, 0) if anomalous else (0, 0, 0), font=font)
    return strip


def overlay_image(pixels: np.ndarray, normalized_map: np.ndarray, alpha: float = 0.5, score: float | None = None,
                  normalized: float | None = None, anomalous: bool | None = None) -> np.ndarray:
    """The overlay with its legend as an (H, W, 3) uint8 array (see `save_overlay`)."""
    heat = colorize(normalized_map).astype(np.float32)
    img = np.rint(pixels.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)
    h, w = img.shape[:2]
    width = max(w, MIN_WIDTH)
    legend = _legend(width, score, normalized, anomalous)
    canvas = Image.new("RGB", (width, h + legend.height), (255, 255, 255))
    canvas.paste(Image.fromarray(img), ((width - w) // 2, 0))
    canvas.paste(legend, (0, h))
    return np.asarray(canvas)


def save_overlay(path: str | os.PathLike, pixels: np.ndarray, normalized_map: np.ndarray, alpha: float = 0.5,
                 score: float | None = None, normalized: float | None = None,
                 anomalous: bool | None = None) -> Path:
    """pixels (S, S, 3) uint8 as the model saw them; normalized_map (S, S) 0..1 (0.5 = the threshold); the
    image's score, normalised score and decision are written under the colour bar when given."""
    img = overlay_image(pixels, normalized_map, alpha, score, normalized, anomalous)
    return atomic_write(path, lambda f: Image.fromarray(img).save(f, format="PNG"))


def overlay_name(rel: Path) -> Path:
    """The overlay file of the image at ``rel`` (relative to --images): ``x/y.png`` -> ``x/y.png``,
    ``x/y.jpg`` -> ``x/y.jpg.png``."""
    return rel.with_suffix(".png") if rel.suffix.lower() == ".png" else rel.with_name(rel.name + ".png")


class OverlayNames:
    """Unique overlay paths under ``out`` for one run: two images never share an overlay file."""

    def __init__(self, out: Path):
        self.out = out
        self._taken: set[str] = set()

    def __call__(self, rel: Path) -> Path:
        base = overlay_name(rel)
        name, n = base, 2
        while name.as_posix().lower() in self._taken:  # lower: one file on a case-insensitive file system
            name = base.with_name(f"{base.stem}-{n}.png")
            n += 1
        self._taken.add(name.as_posix().lower())
        return self.out / name
