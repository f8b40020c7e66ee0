"""The teacher-student anomaly map in numpy, for the device: the same definition as edgead.models.anomaly_map.

The exported int8 models stop at the teacher's and student's level features; this function turns them into
the anomaly map and image score, in float. The alternative, the distance inside the int8 graph, makes an int8
map of 256 levels whose range, calibrated on normal images, clips bright defects at its ceiling (tied scores)
for no gain in time; benchmarks/study_distance.py measures both on a run.

Definition (docs/method.md): per level, features are L2-normalised over channels (x / max(||x||,
1e-12), as torch's F.normalize); the level map is 0.5 * ||t - s||^2 over channels; each level map is
upsampled bilinearly (align_corners=False, i.e. half-pixel centres, source index clamped at 0) to the output
size; the level maps are multiplied; the image score is the map's maximum. A test holds this equal to the
torch implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_EPS = 1e-12


@lru_cache(maxsize=64)
def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w1) of torch's 1-D bilinear resize (align_corners=False): out = v[i0] * (1 - w1) + v[i1] * w1."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    for a in (i0, i1, w1):
        a.setflags(write=False)
    return i0, i1, w1


def upsample(d: np.ndarray, out_size: int) -> np.ndarray:
    """(N, H, W) -> (N, S, S) bilinear, separable: rows then columns.

    Gathers and lerps rather than a matrix product on purpose: no BLAS call, so no BLAS thread pool that
    would contend with the interpreter's threads and slow the map down several-fold."""
    i0, i1, w1 = bilinear_taps(d.shape[1], out_size)
    w1 = w1.astype(d.dtype)[None, :, None]
    rows = d[:, i0, :] * (1.0 - w1) + d[:, i1, :] * w1
    j0, j1, v1 = bilinear_taps(d.shape[2], out_size)
    v1 = v1.astype(d.dtype)[None, None, :]
    return rows[:, :, j0] * (1.0 - v1) + rows[:, :, j1] * v1


def _channels_first(f: np.ndarray, layout: str) -> np.ndarray:
    f = np.asarray(f)
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4:
        raise ValueError(f"features of shape {f.shape}: expected (N, C, H, W) or (N, H, W, C)")
    return np.moveaxis(f, -1, 1) if layout == "NHWC" else f


def level_distance(teacher: np.ndarray, student: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """(N, H, W) float64: 0.5 * squared distance of the channel-normalised features at one level."""
    t = _channels_first(teacher, layout).astype(np.float64)
    s = _channels_first(student, layout).astype(np.float64)
    if t.shape != s.shape:
        raise ValueError(f"teacher features {t.shape} and student features {s.shape} differ in shape")
    t = t / np.maximum(np.sqrt((t * t).sum(axis=1, keepdims=True)), _EPS)
    s = s / np.maximum(np.sqrt((s * s).sum(axis=1, keepdims=True)), _EPS)
    d = t - s
    return 0.5 * (d * d).sum(axis=1)


def anomaly_map(teacher: Sequence[np.ndarray], student: Sequence[np.ndarray], out_size: int,
                layout: str = "NCHW") -> np.ndarray:
    """Level features (lists, one array per level, dequantised to float) -> anomaly maps (N, S, S) float32."""
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout {layout!r}: expected 'NCHW' or 'NHWC'")
    if len(teacher) != len(student) or not teacher:
        raise ValueError(f"{len(teacher)} teacher and {len(student)} student levels: expected the same, >= 1")
    amap = None
    for t, s in zip(teacher, student, strict=True):
        # Distances in float64 (cheap, small); the S x S upsampling and product in float32, as torch does.
        up = upsample(level_distance(t, s, layout).astype(np.float32), out_size)
        amap = up if amap is None else amap * up
    return amap.astype(np.float32)


def image_score(amap: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N,) the maximum of each map."""
    return amap.reshape(len(amap), -1).max(axis=1)
