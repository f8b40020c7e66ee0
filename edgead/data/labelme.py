"""Rasterising labelme annotation files into boolean masks.

Supported shapes: polygon, rectangle (two corners), circle (centre and a point on the rim). Points outside
the image are clipped by the rasteriser (only the part inside the image is drawn). Anything else (lines,
points, a polygon of fewer than 3 points) is refused with an error naming the file and the shape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edgead.errors import EdgeadError


def read_labelme(path: Path) -> dict:
    """A labelme JSON file, checked for a `shapes` list."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeadError(f"{path}: not a readable labelme JSON file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise EdgeadError(f"{path}: not a labelme file (expected a JSON object with a 'shapes' list)")
    return doc


def _points(path: Path, i: int, shape: dict) -> list[tuple[float, float]]:
    try:
        pts = [(float(x), float(y)) for x, y in shape["points"]]
    except (KeyError, TypeError, ValueError):
        raise EdgeadError(f"{path}: shape {i} has no valid 'points' (expected a list of [x, y])") from None
    if not all(math.isfinite(v) for p in pts for v in p):
        raise EdgeadError(f"{path}: shape {i} has a non-finite point")
    return pts


def rasterise(path: Path, doc: dict, size: tuple[int, int]) -> np.ndarray:
    """The union of all shapes of a labelme document as a bool (H, W) mask for an image of `size` (W, H).

    The document's imageWidth/imageHeight, when present, must equal `size` (a label drawn on another
    resolution would be misplaced).
    """
    w, h = size
    dw, dh = doc.get("imageWidth"), doc.get("imageHeight")
    if dw is not None and dh is not None and (int(dw), int(dh)) != (w, h):
        raise EdgeadError(f"{path}: labelme image size {dw}x{dh} but the image is {w}x{h}; expected the same")
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for i, shape in enumerate(doc["shapes"]):
        kind = shape.get("shape_type") or "polygon"  # labelme writes null for polygons in old versions
        pts = _points(path, i, shape)
        if kind == "polygon":
            if len(pts) < 3:
                raise EdgeadError(f"{path}: shape {i} is a polygon of {len(pts)} points; expected at least 3")
            draw.polygon(pts, fill=255, outline=255)
        elif kind == "rectangle":
            if len(pts) != 2:
                raise EdgeadError(f"{path}: shape {i} is a rectangle of {len(pts)} points; expected 2 corners")
            (x0, y0), (x1, y1) = pts
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
        elif kind == "circle":
            if len(pts) != 2:
                raise EdgeadError(f"{path}: shape {i} is a circle of {len(pts)} points; expected centre and rim")
            (cx, cy), (px, py) = pts
            r = math.hypot(px - cx, py - cy)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            raise EdgeadError(f"{path}: shape {i} is a {kind!r}; expected polygon, rectangle or circle "
                              "(an area, so it can become a defect mask)")
    return np.asarray(canvas) > 0
