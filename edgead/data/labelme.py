"""Rasterising labelme annotation files into boolean masks.

Supported shapes: polygon, rectangle (two corners), circle (centre and a point on the rim). Anything else
(lines, points, a polygon of fewer than 3 points) is refused with an error naming the file and the shape, as
is a value of the wrong type anywhere (a shape that is not an object, a size that is not a whole number).

Shapes are clipped to a box around the image before drawing: PIL's rasteriser takes integer coordinates and
silently drops a shape with any coordinate beyond about 1e9, so a triangle reaching (1e300, 0) would vanish
instead of covering the image. Polygons are clipped exactly (Sutherland-Hodgman) to the image grown by
`MARGIN` pixels on every side, so every edge that crosses the image keeps its direction there; a shape whose
vertices all lie in that box is drawn exactly as before. A circle whose box does not fit is drawn from its
equation (pixel centres within the radius), with numbers that cannot overflow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edgead.errors import EdgeadError

MARGIN = 100_000.0  # pixels around the image that clipped shapes may extend into (well inside PIL's range)
MAX_BYTES = 256 * 1024 * 1024  # a labelme file with a 300,000-point polygon is ~10 MB; its image data more


def read_labelme(path: Path) -> dict:
    """A labelme JSON file, checked for a `shapes` list."""
    try:
        if Path(path).stat().st_size > MAX_BYTES:
            raise EdgeadError(f"{path}: {Path(path).stat().st_size} bytes, larger than the {MAX_BYTES} a labelme "
                              "file may hold")
        doc = json.loads(Path(path).read_text())
    except RecursionError:  # json's decoder recurses once per nested [ or {
        raise EdgeadError(f"{path}: not a labelme file (JSON nested too deeply to read)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeadError(f"{path}: not a readable labelme JSON file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise EdgeadError(f"{path}: not a labelme file (expected a JSON object with a 'shapes' list)")
    return doc


def _short(v: object, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _number(v: object) -> float:
    """A JSON number as float; bools, strings and everything else are refused (float("1e3") would pass)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(v)
    return float(v)


def _points(path: Path, i: int, shape: dict) -> list[tuple[float, float]]:
    try:
        pts = [(_number(x), _number(y)) for x, y in shape["points"]]
    except (KeyError, TypeError, ValueError, OverflowError):
        raise EdgeadError(f"{path}: shape {i} has no valid 'points' (expected a list of [x, y] numbers)") from None
    if not all(math.isfinite(v) for p in pts for v in p):
        raise EdgeadError(f"{path}: shape {i} has a non-finite point")
    return pts


def _image_dimension(path: Path, doc: dict, key: str) -> int | None:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or v <= 0:
        raise EdgeadError(f"{path}: {key} {_short(v)}; expected a positive whole number of pixels")
    return int(v)


def _clip_polygon(pts: list[tuple[float, float]], lo_x: float, lo_y: float, hi_x: float,
                  hi_y: float) -> list[tuple[float, float]]:
    """Sutherland-Hodgman clipping of a polygon to an axis-aligned box; finite inputs give finite outputs."""

    def cut(poly, inside, cross):
        out = []
        for k, cur in enumerate(poly):
            prev = poly[k - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(cross(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cross(prev, cur))
        return out

    def at_x(c):
        def f(p, q):  # halves first: the difference of two huge coordinates must not overflow
            t = (c / 2 - p[0] / 2) / (q[0] / 2 - p[0] / 2)
            return c, p[1] * (1 - t) + q[1] * t  # a convex combination: between p and q, never overflowing
        return f

    def at_y(c):
        def f(p, q):
            t = (c / 2 - p[1] / 2) / (q[1] / 2 - p[1] / 2)
            return p[0] * (1 - t) + q[0] * t, c
        return f

    for inside, cross in ((lambda p: p[0] >= lo_x, at_x(lo_x)), (lambda p: p[0] <= hi_x, at_x(hi_x)),
                          (lambda p: p[1] >= lo_y, at_y(lo_y)), (lambda p: p[1] <= hi_y, at_y(hi_y))):
        pts = cut(pts, inside, cross)
        if not pts:
            break
    return pts


def _disc(size: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    """Pixels whose centre lies within `r` of (cx, cy), as bool (H, W), for circles too large for PIL."""
    w, h = size
    scale = max(abs(cx), abs(cy), r, float(w), float(h))  # work in units of `scale`: nothing overflows
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.hypot((xs / scale - cx / scale), (ys / scale - cy / scale))
    return d <= r / scale


def rasterise(path: Path, doc: dict, size: tuple[int, int]) -> np.ndarray:
    """The union of all shapes of a labelme document as a bool (H, W) mask for an image of `size` (W, H).

    The document's imageWidth/imageHeight, when present, must equal `size` (a label drawn on another
    resolution would be misplaced).
    """
    w, h = size
    dw, dh = _image_dimension(path, doc, "imageWidth"), _image_dimension(path, doc, "imageHeight")
    if dw is not None and dh is not None and (dw, dh) != (w, h):
        raise EdgeadError(f"{path}: labelme image size {dw}x{dh} but the image is {w}x{h}; expected the same")
    if not isinstance(doc.get("shapes"), list):
        raise EdgeadError(f"{path}: not a labelme file (expected a JSON object with a 'shapes' list)")
    box = (-MARGIN, -MARGIN, w + MARGIN, h + MARGIN)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    extra = np.zeros((h, w), bool)  # circles drawn from their equation
    for i, shape in enumerate(doc["shapes"]):
        if not isinstance(shape, dict):
            raise EdgeadError(f"{path}: shape {i} is {type(shape).__name__}; expected an object with "
                              "'shape_type' and 'points'")
        kind = shape.get("shape_type") or "polygon"  # labelme writes null for polygons in old versions
        if not isinstance(kind, str):
            raise EdgeadError(f"{path}: shape {i} has shape_type {_short(kind)}; expected polygon, rectangle "
                              "or circle")
        pts = _points(path, i, shape)
        if kind == "polygon":
            if len(pts) < 3:
                raise EdgeadError(f"{path}: shape {i} is a polygon of {len(pts)} points; expected at least 3")
            if not all(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in pts):
                pts = _clip_polygon(pts, *box)
            if len(pts) >= 3:
                draw.polygon(pts, fill=255, outline=255)
        elif kind == "rectangle":
            if len(pts) != 2:
                raise EdgeadError(f"{path}: shape {i} is a rectangle of {len(pts)} points; expected 2 corners")
            (x0, y0), (x1, y1) = [(min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])) for x, y in pts]
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
        elif kind == "circle":
            if len(pts) != 2:
                raise EdgeadError(f"{path}: shape {i} is a circle of {len(pts)} points; expected centre and rim")
            (cx, cy), (px, py) = pts
            r = math.hypot(px / 2 - cx / 2, py / 2 - cy / 2) * 2  # halves: no overflow for huge coordinates
            if not math.isfinite(r):  # farther apart than a float can say: the disc covers everything here
                extra[:] = True
            elif max(abs(cx), abs(cy)) + r <= MARGIN:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
            else:
                extra |= _disc((w, h), cx, cy, r)
        else:
            raise EdgeadError(f"{path}: shape {i} is a {kind!r}; expected polygon, rectangle or circle "
                              "(an area, so it can become a defect mask)")
    return (np.asarray(canvas) > 0) | extra
