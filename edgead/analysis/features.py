"""The feature vectors every analysis looks at, and the small input checks they share.

A "patch" is the feature vector at one spatial position of one level. Features are the frozen teacher's,
L2-normalised over all channels of the level: that is the representation the detector compares (the
STFPM distance is taken between normalised vectors), so importance, t-SNE and selective training all see
the same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgead.data.stream import TaskStream
from edgead.engine.tensors import compute_latents, compute_teacher_features
from edgead.errors import EdgeadError
from firmware_sim.preprocess import Preprocess


def parse_percents(text: str | None) -> list[float]:
    """'1,5,10' -> [1.0, 5.0, 10.0] (sorted, unique); each in (0, 100]."""
    items = [v.strip() for v in (text or "").split(",") if v.strip()]
    if not items:
        raise EdgeadError(f"--percent {text!r}: expected a comma-separated list of percentages in (0, 100], "
                          "e.g. 1,5,10,100")
    try:
        values = [float(v) for v in items]
    except ValueError:
        raise EdgeadError(f"--percent {text!r}: expected numbers such as 1,5,10,100") from None
    return check_percents(values)


def check_percents(values: list[float]) -> list[float]:
    if not values:
        raise EdgeadError("no percentages given: expected at least one value in (0, 100]")
    bad = [v for v in values if not (math.isfinite(v) and 0.0 < v <= 100.0)]
    if bad:
        raise EdgeadError(f"percentage {bad[0]:g} is outside (0, 100]: expected the share of channels to "
                          "keep, e.g. 1 for the top 1%")
    return sorted(set(float(v) for v in values))


def percent_key(p: float) -> str:
    """JSON key and file-name part of a percentage: 1 -> '1', 2.5 -> '2.5'."""
    return f"{p:g}"


def task_stream(root: str | Path, tasks: str | None) -> TaskStream:
    """The categories to analyse; None means every category under root. Checked before any model loads."""
    names = None
    if tasks is not None:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if not names:
            raise EdgeadError(f"--tasks {tasks!r}: expected at least one category name, e.g. nut,pill")
    return TaskStream(root, names)


def build_teacher_student(det, weights: str | Path | None, seed: int):
    """The detector every analysis starts from; seeded, so the student's random start is reproducible."""
    from edgead.models.teacher_student import TeacherStudent

    torch.manual_seed(seed)
    return TeacherStudent(det, weights=None if weights is None else str(weights))


def level_features(model, images: np.ndarray, pre: Preprocess, device: str = "cpu") -> list[np.ndarray]:
    """Per detector level: the teacher's L2-normalised features (N, C, H, W) of uint8 images."""
    if len(images) == 0:
        raise EdgeadError("no images to compute features of")
    feats = compute_teacher_features(model, compute_latents(model, images, pre, device=device))
    return [F.normalize(f, p=2, dim=1).cpu().numpy().astype(np.float32) for f in feats]


def patches(features: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N*H*W, C): one row per spatial position."""
    n, c, h, w = features.shape
    return features.transpose(0, 2, 3, 1).reshape(n * h * w, c)


def mask_coverage(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, S, S) bool masks -> (N, height, width): the defect share of the image area under each patch."""
    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).unsqueeze(1)
    return F.adaptive_avg_pool2d(m, (height, width)).squeeze(1).numpy()


def sample_rows(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most `limit` row indices out of n, drawn without replacement and kept in order."""
    if n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))
