"""The teacher-student anomaly map in numpy, for the device: the same definition as edgead.models.anomaly_map.

The exported int8 models stop at the teacher's and student's level features; this function turns them into
the anomaly map and image score, in float. The alternative, the distance inside the int8 graph, makes an int8
map of 256 levels whose range, calibrated on normal images, clips bright defects at its ceiling (tied scores)
for no gain in time; benchmarks/study_distance.py measures both on a run.

Definition (docs/method.md): per level, features are L2-normalised over channels (x / max(||x||,
1e-12), as torch's F.normalize); the level map is 0.5 * ||t - s||^2 over channels; each level map is
upsampled bilinearly (align_corners=False, i.e. half-pixel centres, source index clamped at 0) to the output
size; the level maps are multiplied. A test holds this equal to the torch implementation.

Score post-processing (``ScorePost``, spelled ``max``, ``blur:4,max``, ``topk:0.01``, ``blur:4,topk:0.01``): an
optional Gaussian blur of the map (anomalib blurs STFPM maps with sigma 4 before taking the score) and the image
score as the map's maximum or the mean of its top fraction of pixels. It is written here once, in numpy, and
run by the host model (edgead.models.teacher_student), the export's fidelity check and the device, so a
threshold calibrated on the host means the same on the device. A checkpoint or manifest without it reads as
``max`` (what every model scored with before the option existed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from firmware_sim.errors import UserError

_EPS = 1e-12
LEGACY_SCORE = "max"  # what a checkpoint or manifest that records no score post-processing was scored with


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


@lru_cache(maxsize=16)
def gaussian_kernel(sigma: float) -> np.ndarray:
    """anomalib's 1-D kernel for sigma: 2 * int(4 sigma + 0.5) + 1 taps, normalised to sum 1 (float32)."""
    half = int(4.0 * sigma + 0.5)
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    k.setflags(write=False)
    return k


def gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """(N, H, W) -> (N, H, W) float32: separable Gaussian blur with reflected borders (as anomalib's
    GaussianBlur2d). Shifted slices, not a matrix product: no BLAS thread pool on the device (see upsample)."""
    maps = np.asarray(maps, np.float32)
    k = gaussian_kernel(float(sigma))
    half = len(k) // 2
    out = maps
    for axis in (1, 2):
        n = out.shape[axis]
        pad = [(0, 0)] * 3
        pad[axis] = (half, half)
        # numpy's "reflect" mirrors without repeating the edge (torch's reflect); it keeps reflecting when the
        # kernel is wider than the map, so tiny maps work too.
        p = np.pad(out, pad, mode="reflect") if n > 1 else np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * (p[:, i:i + n] if axis == 1 else p[:, :, i:i + n])
        out = acc
    return out


@dataclass(frozen=True)
class ScorePost:
    """How an anomaly map becomes the deployed map and the image score.

    blur: sigma of a Gaussian blur of the map in pixels (0: none). topk: None scores by the map's maximum;
    a fraction in (0, 1] scores by the mean of the ceil(topk * pixels) largest values.
    """

    blur: float = 0.0
    topk: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.blur) and 0.0 <= self.blur <= 64.0):
            raise UserError(f"score blur sigma {self.blur}: expected 0 (no blur) to 64 pixels")
        if self.topk is not None and not (math.isfinite(self.topk) and 0.0 < self.topk <= 1.0):
            raise UserError(f"score topk fraction {self.topk}: expected a fraction in (0, 1]")

    @classmethod
    def parse(cls, text: str | ScorePost | None) -> ScorePost:
        """'max' | 'topk:F' | 'blur:S,max' | 'blur:S,topk:F' (None or '': 'max')."""
        if isinstance(text, ScorePost):
            return text
        spelling = "expected max, topk:F, blur:S,max or blur:S,topk:F (S a sigma in pixels, F a fraction)"
        parts = [t.strip() for t in str(text or LEGACY_SCORE).lower().split(",") if t.strip()]
        blur, topk, reducers = 0.0, None, 0
        for part in parts:
            name, _, value = part.partition(":")
            try:
                if name == "blur" and value:
                    blur = float(value)
                elif name == "topk" and value:
                    topk, reducers = float(value), reducers + 1
                elif name == "max" and not value:
                    reducers += 1
                else:
                    raise ValueError(part)
            except ValueError:
                raise UserError(f"score post-processing {text!r}: {part!r} not understood; {spelling}") from None
        if reducers != 1 or (len(parts) == 2 and not parts[0].startswith("blur:")) or len(parts) > 2:
            raise UserError(f"score post-processing {text!r}: {spelling}")
        return cls(blur=blur, topk=topk)

    def __str__(self) -> str:
        reduce = "max" if self.topk is None else f"topk:{self.topk:g}"
        return f"blur:{self.blur:g},{reduce}" if self.blur else reduce

    def map(self, amap: np.ndarray) -> np.ndarray:
        """(N, S, S) raw maps -> the deployed maps (blurred when blur > 0), float32."""
        return gaussian_blur(amap, self.blur) if self.blur else np.asarray(amap, np.float32)

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """(N, P) pixel values of each image (already post-processed maps) -> (N,) image scores, float32."""
        v = np.asarray(values, np.float32).reshape(len(values), -1)
        if self.topk is None:
            return v.max(axis=1)
        k = max(1, math.ceil(self.topk * v.shape[1] - 1e-9))
        top = np.partition(v, v.shape[1] - k, axis=1)[:, v.shape[1] - k:]
        return top.astype(np.float64).mean(axis=1).astype(np.float32)

    def score(self, amap: np.ndarray) -> np.ndarray:
        """(N, S, S) post-processed maps -> (N,) image scores."""
        return self.reduce(np.asarray(amap).reshape(len(amap), -1))

    def __call__(self, amap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) raw maps -> (deployed maps, image scores)."""
        m = self.map(amap)
        return m, self.score(m)
