"""Deterministic synthetic anomaly-detection data in MVTec AD layout (the project's built-in data).

Normal images are either real texture photos bundled with scikit-image (brick, grass, gravel; CC0) under random
crops, flips and lighting, or procedural objects (hex nut, pill, bottle top view) under random pose and lighting.
Defects are painted with a soft alpha; the ground-truth mask is derived from the final uint8 difference, so it
covers exactly the changed pixels. Every random draw comes from ``np.random.default_rng`` seeded by
(seed, crc32(category), index[, defect]), so one seed always yields byte-identical PNG files.
"""

from __future__ import annotations

import functools
import re
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from edgead.errors import EdgeadError
from edgead.outputs import check_out
from firmware_sim.outputs import publish, write_marker

DEFAULT_CATEGORIES: tuple[str, ...] = ("brick", "grass", "nut", "pill")
DEFECT_KINDS: tuple[str, ...] = ("scratch", "hole", "stain", "crack", "missing")
TEXTURE_STYLES = ("brick", "grass", "gravel")
OBJECT_STYLES = ("nut", "pill", "bottle")
STYLES = TEXTURE_STYLES + OBJECT_STYLES
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_MIN_SIZE, _MAX_SIZE = 32, 2048


@dataclass(frozen=True)
class _Profile:
    style: str
    gray: bool  # saved as single-channel PNG, like MVTec's grayscale categories
    tint: tuple[float, float, float]  # colour multiplier of the texture / object body
    bg: tuple[float, float, float]  # background colour behind objects
    scale: float  # texture crop fraction of the 512 px photo, or object size factor
    two_tone: bool  # capsule-like pills with two coloured halves
    kinds: tuple[str, ...]  # defect kinds used for this category by generate_dataset


_TEXTURE_KINDS = ("scratch", "hole", "stain", "crack")  # a "missing piece" makes little sense on a texture
_CANONICAL = {
    "brick": _Profile("brick", True, (1.0, 1.0, 1.0), (0, 0, 0), 0.6, False, _TEXTURE_KINDS),
    "grass": _Profile("grass", False, (0.78, 1.05, 0.55), (0, 0, 0), 0.5, False, _TEXTURE_KINDS),
    "gravel": _Profile("gravel", True, (1.0, 1.0, 1.0), (0, 0, 0), 0.45, False, _TEXTURE_KINDS),
    "nut": _Profile("nut", False, (0.70, 0.70, 0.74), (38, 40, 46), 1.0, False, DEFECT_KINDS),
    "pill": _Profile("pill", False, (0.96, 0.93, 0.86), (52, 56, 62), 1.0, False, DEFECT_KINDS),
    "bottle": _Profile("bottle", False, (0.55, 0.45, 0.30), (22, 22, 24), 1.0, False, DEFECT_KINDS),
}
# A few MVTec names have an obvious look-alike; everything else is hashed onto a style.
_ALIASES = {"metal_nut": "nut", "capsule": "pill", "tile": "gravel", "carpet": "grass", "grid": "brick"}


def _crc(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))  # stable across runs, unlike hash()


@functools.lru_cache(maxsize=256)
def _profile(category: str) -> _Profile:
    if category in _CANONICAL:
        return _CANONICAL[category]
    crc = _crc(category)
    base = _CANONICAL[_ALIASES.get(category, STYLES[crc % len(STYLES)])]
    rng = np.random.default_rng(crc)  # name-dependent look, so different names give different images
    tint = np.clip(np.asarray(base.tint) * (1 + 0.35 * rng.uniform(-1, 1, 3)), 0.25, 1.25)
    is_texture = base.style in TEXTURE_STYLES
    gray = bool(rng.random() < 0.4) if is_texture else False
    if gray:
        tint = np.full(3, tint.mean())
    elif not is_texture:  # keep shaded object bodies out of white clipping
        tint = tint * min(1.0, 0.95 / tint.max())
    bg = tuple(float(v) for v in np.clip(np.asarray(base.bg) * rng.uniform(0.6, 1.6, 3), 10, 120))
    scale = base.scale * rng.uniform(0.8, 1.2) if is_texture else rng.uniform(0.85, 1.1)
    two_tone = base.style == "pill" and bool(rng.random() < 0.5 or category == "capsule")
    return _Profile(base.style, gray, tuple(float(v) for v in tint), bg, float(scale), two_tone, base.kinds)


@functools.lru_cache(maxsize=4)
def _texture_source(style: str) -> np.ndarray:
    import skimage.data  # imported lazily: only texture categories need it

    return np.ascontiguousarray(getattr(skimage.data, style)())  # 512x512 uint8 gray, bundled in the wheel


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Low-frequency noise with unit std: a coarse random grid upsampled with cubic splines."""
    z = ndimage.zoom(rng.standard_normal((cells, cells)), n / cells, order=3, mode="nearest")[:n, :n]
    return ((z - z.mean()) / (z.std() + 1e-6)).astype(np.float32)


def _illumination(rng: np.random.Generator, n: int, amp: float) -> np.ndarray:
    """Uneven lighting: a linear gradient in a random direction plus a soft low-frequency wobble."""
    c = np.linspace(-1, 1, n, dtype=np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    grad = np.cos(ang) * c[None, :] + np.sin(ang) * c[:, None]
    return 1 + amp * grad + 0.3 * amp * _smooth_noise(rng, n, 4)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass
class _Scene:
    clean: np.ndarray  # uint8 HxWx3
    bg: np.ndarray  # float HxWx3: what shows through where a piece is missing
    obj: np.ndarray  # float HxW object coverage in [0, 1] (all ones for textures)
    sdf: np.ndarray  # signed distance to the object outline in px (negative inside)


def _render_texture(p: _Profile, rng: np.random.Generator, n: int) -> _Scene:
    src = _texture_source(p.style)
    c = int(np.clip(512 * p.scale * rng.uniform(0.85, 1.15), min(n, 512), 512))
    y, x = rng.integers(0, 512 - c + 1, 2)
    patch = src[y : y + c, x : x + c]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[::-1]
    if p.style != "brick":  # bricks have a running direction; the other photos are isotropic
        patch = np.rot90(patch, int(rng.integers(4)))
    g = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((n, n), Image.BILINEAR), np.float32)
    m = g.mean()
    g = ((g - m) * rng.uniform(0.85, 1.15) + m * rng.uniform(0.9, 1.1)) * _illumination(rng, n, 0.06)
    clean = _to_uint8(g[..., None] * np.asarray(p.tint, np.float32))
    backing = np.full((n, n, 3), rng.uniform(15, 40), np.float32)  # dark backing behind a torn-out piece
    ramp = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)
    sdf = -np.minimum(ramp[:, None], ramp[None, :])  # distance to the image border
    return _Scene(clean, backing, np.ones((n, n), np.float32), sdf)


def _nut(p, n, u, v, r, phi, light):
    a = 0.27 * n * p.scale  # apothem of the hexagon
    hexd = np.max([u * np.cos(t) + v * np.sin(t) for t in np.arange(6) * np.pi / 3], axis=0) - a
    sdf = np.maximum(np.maximum(hexd, r - 1.1 * a), 0.42 * a - r)  # chamfered corners, bore in the middle
    t = r / a
    shade = np.interp(t, [0, 0.42, 0.58, 0.62, 0.9, 1.0, 1.2], [0.3, 0.35, 0.5, 0.78, 0.8, 0.9, 0.95])
    shade = shade + 0.12 * np.cos(phi - light) * np.clip(t, 0, 1)
    shade += np.clip((t - 0.9) / 0.15, 0, 1) * 0.25 * np.cos(phi - light)  # the chamfer catches the light
    shade *= np.where(t < 0.6, 0.8 + 0.2 * np.sin(r * 2 * np.pi / max(1.5, 0.06 * a)), 1.0)  # thread
    return shade[..., None] * np.asarray(p.tint) * 255, sdf


def _pill(p, n, u, v, r, phi, light, rng):
    half, rad = 0.2 * n * p.scale, 0.12 * n * p.scale
    q = np.hypot(np.maximum(np.abs(u) - half, 0), v)  # distance to the capsule's axis segment
    sdf = q - rad
    nz = np.sqrt(np.clip(1 - (q / rad) ** 2, 0, 1))
    nx, ny = np.sign(u) * np.maximum(np.abs(u) - half, 0) / rad, v / rad
    lx, ly = np.cos(light), np.sin(light)
    shade = 0.5 + 0.4 * nz + 0.15 * (nx * lx + ny * ly)
    spec = 0.35 * np.exp(-((nx - 0.4 * lx) ** 2 + (ny - 0.4 * ly) ** 2) / 0.03) * (nz > 0)
    body = np.broadcast_to(np.asarray(p.tint, np.float32), u.shape + (3,)).copy()
    if p.two_tone:
        body[u > 0] = np.asarray(p.tint)[::-1] * np.array([0.9, 0.6, 0.5])
    else:  # small red speckles printed in the coating, as on MVTec's pill
        dots = ndimage.gaussian_filter((rng.random(u.shape) < 0.004).astype(np.float32), 0.6 * n / 128)
        dot = np.clip(dots * 8, 0, 0.8)[..., None]
        body = body * (1 - dot) + np.array([0.75, 0.25, 0.2]) * dot
    return (body * shade[..., None] + spec[..., None]) * 255, sdf


def _bottle(p, n, u, v, r, phi, light):
    rad = 0.4 * n * p.scale
    t = r / rad
    shade = np.interp(t, [0, 0.45, 0.55, 0.62, 0.7, 0.78, 1.0], [0.08, 0.15, 0.3, 1.0, 0.75, 0.6, 0.4])
    shade = shade + 0.18 * np.cos(phi - light) * np.clip(t, 0, 1)
    return shade[..., None] * np.asarray(p.tint) * 255, r - rad


def _render_object(p: _Profile, rng: np.random.Generator, n: int) -> _Scene:
    coords = np.arange(n, dtype=np.float32) - (n - 1) / 2
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    cy, cx = rng.uniform(-0.04, 0.04, 2) * n
    theta = rng.uniform(-0.35, 0.35) if p.style == "pill" else rng.uniform(0, 2 * np.pi)
    u = np.cos(theta) * (xx - cx) + np.sin(theta) * (yy - cy)  # object frame: rotate about its centre
    v = -np.sin(theta) * (xx - cx) + np.cos(theta) * (yy - cy)
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    light = rng.uniform(0, 2 * np.pi) - theta  # light direction, expressed in the object frame
    if p.style == "nut":
        body, sdf = _nut(p, n, u, v, r, phi, light)
    elif p.style == "pill":
        body, sdf = _pill(p, n, u, v, r, phi, light, rng)
    else:
        body, sdf = _bottle(p, n, u, v, r, phi, light)
    gain = rng.uniform(0.88, 1.12)
    grain = rng.normal(0, 2.0, (n, n, 1)).astype(np.float32)  # sensor noise, same on object and background
    bg = np.asarray(p.bg, np.float32) * _illumination(rng, n, 0.15)[..., None] * gain + grain
    body = body * (1 + 0.04 * _smooth_noise(rng, n, 16))[..., None] * gain + grain
    obj = np.clip(0.5 - sdf, 0, 1).astype(np.float32)  # one-pixel anti-aliased outline
    clean = _to_uint8(bg * (1 - obj[..., None]) + body * obj[..., None])
    return _Scene(clean, _to_uint8(bg).astype(np.float32), obj, sdf.astype(np.float32))


# --- defects: each returns (alpha HxW in [0, 1], target HxWx3 float); image = clean*(1-alpha) + target*alpha


def _stroke(n: int, pts: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased polyline of the given width, evaluated only inside its bounding box (fast at 512 px)."""
    lo = np.clip(np.floor(pts.min(0) - width - 2), 0, n).astype(int)
    hi = np.clip(np.ceil(pts.max(0) + width + 2), 0, n).astype(int)
    yy, xx = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].astype(np.float32)
    dist = np.full(yy.shape, np.inf, np.float32)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx + 1e-9), 0, 1)
        dist = np.minimum(dist, np.hypot(yy - y0 - t * dy, xx - x0 - t * dx))
    out = np.zeros((n, n), np.float32)
    out[lo[0] : hi[0], lo[1] : hi[1]] = np.clip(width / 2 + 0.5 - dist, 0, 1)
    return out


def _walk(rng, start, angle, length, step, turn, jag):
    """Random path: `turn` bends the heading smoothly (scratch), `jag` zig-zags around it (crack)."""
    pts = [np.asarray(start, np.float64)]
    for _ in range(max(2, int(length / step))):
        angle += rng.normal(0, turn)
        a = angle + rng.normal(0, jag)
        pts.append(pts[-1] + step * np.array([np.sin(a), np.cos(a)]))
    return np.array(pts)


def _blob(rng, n, cy, cx, radius, soft):
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    th, ry, rx = rng.uniform(0, np.pi), radius * rng.uniform(0.6, 1.0), radius * rng.uniform(0.8, 1.3)
    u = np.cos(th) * (xx - cx) + np.sin(th) * (yy - cy)
    v = -np.sin(th) * (xx - cx) + np.cos(th) * (yy - cy)
    e = np.hypot(u / rx, v / ry) + 0.25 * _smooth_noise(rng, n, 8)  # ragged outline
    return np.clip((1 - e) / soft, 0, 1)


def _defect(kind: str, rng: np.random.Generator, sc: _Scene, strength: float):
    n = sc.clean.shape[0]
    s = n / 128 * strength
    clean = sc.clean.astype(np.float32)
    obj_like = sc.obj.min() < 1
    # Defects sit on the object (or away from the border of a texture); missing pieces bite into the outline.
    if kind == "missing" and obj_like:
        cand = (sc.sdf < 0) & (sc.sdf > -0.02 * n)  # on the outline, so the bite shows
    else:
        cand = sc.sdf < -(0.03 if obj_like else 0.15) * n
    cy, cx = np.unravel_index(rng.choice(np.flatnonzero(cand)), cand.shape)
    if kind in ("scratch", "crack"):
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.12, 0.22) * n * strength
        smooth = kind == "scratch"
        step, turn, jag = (3.0, 0.08, 0.0) if smooth else (2.0, 0.15, 0.6)
        step *= n / 128
        paths = [_walk(rng, (cy, cx), ang + k * np.pi, length, step, turn, jag) for k in (0, 1)]
        main = np.concatenate([paths[0][::-1], paths[1][1:]])
        width = rng.uniform(0.8, 1.4) * s if smooth else rng.uniform(1.0, 1.6) * s
        alpha = _stroke(n, main, width)
        if smooth:
            bright = rng.random() < 0.5
            target = np.minimum(clean + 110, 255) if bright else clean * 0.3
            alpha *= rng.uniform(0.75, 1.0)
        else:  # cracks branch off the main line and are dark
            for _ in range(int(rng.integers(1, 4))):
                root = main[rng.integers(len(main))]
                br = _walk(
                    rng,
                    root,
                    ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2),
                    length * 0.5,
                    step,
                    0.15,
                    0.6,
                )
                alpha = np.maximum(alpha, _stroke(n, br, width * 0.7))
            target = clean * 0.15 + 5
    elif kind == "hole":
        rad = rng.uniform(0.03, 0.055) * n * strength
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        d = np.hypot(yy - cy, (xx - cx) * rng.uniform(0.85, 1.15)) - rad
        rim = 0.5 * rad
        core = np.clip(0.5 - d, 0, 1)
        alpha = np.maximum(core, 0.85 * np.clip(0.5 - (d - rim), 0, 1))
        depth = np.clip(-d / rad, 0, 1)[..., None]  # darker towards the centre of the hole
        inner = np.full_like(clean, rng.uniform(10, 30)) * (1.3 - 0.6 * depth)
        rim_target = clean * 0.55 if rng.random() < 0.5 else np.minimum(clean * 1.3 + 30, 255)
        target = np.where(core[..., None] > 0, inner, rim_target)
    elif kind == "stain":
        alpha = _blob(rng, n, cy, cx, rng.uniform(0.06, 0.11) * n * strength, 0.5) * rng.uniform(0.6, 0.9)
        colour = rng.uniform(0.1, 0.6, 3)
        local = clean[alpha > 0.3].mean() if (alpha > 0.3).any() else 128.0
        # darken bright surfaces (dirt, oil), lighten dark ones (residue) so the stain is always visible
        target = clean * colour if local > 90 else np.minimum(clean * 0.5 + 60 + colour * 200, 255)
    elif kind == "missing":
        alpha = _blob(rng, n, cy, cx, rng.uniform(0.07, 0.12) * n * strength, 0.15)
        target = sc.bg
    else:
        raise EdgeadError(f"defect kind {kind!r} is unknown; expected one of {', '.join(DEFECT_KINDS)}")
    if kind != "missing":
        alpha = alpha * sc.obj  # paint only on the object, not on the table behind it
    alpha[alpha < 0.05] = 0  # drop the faint fringe so the ground truth stays compact
    return alpha, target


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise EdgeadError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng_txt = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise EdgeadError(f"{name} must be {rng_txt}, got {value}")
    return int(value)


def _check_category(category) -> str:
    if not isinstance(category, str) or not _NAME_RE.match(category):
        raise EdgeadError(
            f"category {category!r} is not a valid name; expected letters, digits, '_' or '-' (e.g. 'brick')"
        )
    return category


def render_sample(
    category: str, index: int, seed: int, image_size: int, defect: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (clean_uint8 HxWx3, image_uint8 HxWx3, mask bool HxW). defect None -> image == clean, mask all False."""
    p = _profile(_check_category(category))
    n = _check_int("image_size", image_size, _MIN_SIZE, _MAX_SIZE)
    index, seed = _check_int("index", index, 0), _check_int("seed", seed, 0)
    if defect is not None and defect not in DEFECT_KINDS:
        raise EdgeadError(
            f"defect kind {defect!r} is unknown; expected None or one of {', '.join(DEFECT_KINDS)}"
        )
    crc = _crc(category)
    rng = np.random.default_rng([seed, crc, index])
    sc = (_render_texture if p.style in TEXTURE_STYLES else _render_object)(p, rng, n)
    if defect is None:
        return sc.clean, sc.clean.copy(), np.zeros((n, n), bool)
    drng = np.random.default_rng([seed, crc, index, 1 + DEFECT_KINDS.index(defect)])
    min_px = max(16, int(0.003 * n * n))
    strength = 1.0
    for _ in range(12):  # a defect that barely changes anything is useless as ground truth: redraw bigger
        alpha, target = _defect(defect, drng, sc, strength)
        if p.gray:  # keep grayscale categories gray so the single-channel PNG loses nothing
            target = np.repeat(target.mean(-1, keepdims=True), 3, -1)
        image = _to_uint8(sc.clean * (1 - alpha[..., None]) + target * alpha[..., None])
        mask = np.any(image != sc.clean, axis=-1)  # exactly the changed pixels, after uint8 rounding
        if mask.sum() >= min_px:
            return sc.clean, image, mask
        strength *= 1.25
    raise RuntimeError(f"could not place a visible {defect} on {category} sample {index}")  # pragma: no cover


def _save(path: Path, arr: np.ndarray) -> None:
    # Fixed options and no metadata chunks: the same pixels always give the same bytes.
    Image.fromarray(arr).save(path, format="PNG", compress_level=6)


def _split_counts(total: int, kinds: Sequence[str]) -> list[tuple[str, int]]:
    k = len(kinds)
    return [(kind, max(1, total // k + (i < total % k))) for i, kind in enumerate(kinds)]


def generate_dataset(
    out: str | Path,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    seed: int = 0,
    image_size: int = 128,
    n_train: int = 24,
    n_test: int = 12,
    *,
    overwrite: bool = False,
) -> Path:
    """Writes out/<category>/train/good/000.png ..., out/<category>/test/good/*.png, out/<category>/test/<defect>/*.png,
    out/<category>/ground_truth/<defect>/<stem>_mask.png (0/255 uint8 PNG, same size as the image). Returns out.

    ``n_test`` good test images plus about ``n_test`` defective ones spread over the category's defect kinds
    (at least one each). Each category is written to a hidden sibling folder and renamed into place when
    complete, so an interrupted run never leaves a category that looks finished.
    """
    out = Path(out)
    cats = (categories,) if isinstance(categories, str) else tuple(categories)
    if not cats:
        raise EdgeadError("categories is empty; expected at least one category name (e.g. 'brick')")
    for c in cats:
        _check_category(c)
    if len(set(cats)) != len(cats):
        raise EdgeadError(f"categories contain duplicates: {list(cats)}")
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, _MIN_SIZE, _MAX_SIZE)
    n_train, n_test = _check_int("n_train", n_train, 1), _check_int("n_test", n_test, 1)
    if out.exists() and not out.is_dir():
        raise EdgeadError(f"output {out} exists and is not a folder; expected a folder path")
    for c in cats:  # refuse before writing anything; overwrite replaces only categories edgead wrote
        check_out(out / c, kind="dataset", force=overwrite, what="category folder", flag="--overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for c in cats:
        gray = _profile(c).gray
        tmp = out / f".{c}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        index = 0

        def write(sub: str, stem: str, img: np.ndarray, tmp=tmp, gray=gray) -> None:
            folder = tmp / sub
            folder.mkdir(parents=True, exist_ok=True)
            _save(folder / f"{stem}.png", img[..., 0] if gray and img.ndim == 3 else img)

        for split, count in (("train", n_train), ("test", n_test)):
            for i in range(count):
                write(f"{split}/good", f"{i:03d}", render_sample(c, index, seed, image_size, None)[0])
                index += 1
        for kind, count in _split_counts(n_test, _profile(c).kinds):
            for i in range(count):
                _, img, mask = render_sample(c, index, seed, image_size, kind)
                write(f"test/{kind}", f"{i:03d}", img)
                write(f"ground_truth/{kind}", f"{i:03d}_mask", mask.astype(np.uint8) * 255)
                index += 1
        write_marker(tmp, "dataset")
        publish(tmp, out / c)
    return out
