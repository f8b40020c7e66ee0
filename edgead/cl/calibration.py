"""Per-task calibration that stays right after later tasks, without stored images.

A task's threshold and score statistics are fitted on its own held-out normals right after it is trained
(`fit_calibration`). Training later tasks moves the student, and with it the scores of the earlier products'
normals, so a threshold fitted once goes stale; and a single threshold fitted on the last task is tuned to the
last product only. The choice made here:

* **Calibration anchors** — per task, ``per_task`` (default 1) held-out normal images are kept as a small crop
  (``anchor_side`` x ``anchor_side``, 8 at MCUNet's stride 8) of their frozen-trunk latent, int8-channel encoded
  (about 1.8 kB at 24 channels): no image is stored. The anchors are never replayed (training on them would
  pull their scores down and hide the drift). Their mean score is recorded when the task is calibrated.
* **Recalibration** after every later update: each earlier task's threshold and score statistics are scaled by
  ``ratio = mean anchor score now / mean anchor score at calibration``. Scores are distances between teacher
  and student features, so a student that drifts on a product scales that product's normal scores; the ratio
  of the same anchors (same crop, same quantisation error) cancels everything but that drift.
* With a byte budget the anchors are reserved **inside** it: the replay memory gets the budget minus the
  anchors of the tasks seen so far (re-shared before each new task: no stream length is assumed). With a
  sample count, or
  for fine-tuning and joint training (no memory), they are extra bytes, reported as ``calibration_bytes``.

Why not a slice of replayed samples or their stored scores: at microcontroller budgets a task keeps at most
one or two latents, sometimes none (image replay at 50 kB keeps no image at all), and fine-tuning keeps
nothing; anchors cost a fixed ~1.8 kB per task for every strategy. The runner measures the choice: it also
fits an *oracle* threshold on each task's full held-out normals with the current model (evaluation only,
never deployed) and reports the deployed F1 at every threshold (results.json ``deployed``).

The task-agnostic threshold (used without ``--task`` on the device) is the **maximum** of the tasks'
thresholds: no product's normals cross it more often than they cross their own threshold, so no product gets
more false alarms than at its own; products with lower scores may miss faint defects — give ``--task``.
How each task's threshold is set from its held-out normals is the run's threshold rule (docs/thresholds.md).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edgead.cl.crops import random_crop
from edgead.engine.tensors import compute_latents
from edgead.errors import EdgeadError
from edgead.models.teacher_student import Calibration
from firmware_sim.atomic import atomic_write
from firmware_sim.codecs import EncodedLatent, get_codec

ANCHOR_CODEC = "int8-channel"
STATISTICS = ("image", "mean")  # an anchor's image score (the deployed post-processing) or its anomaly map's mean


@dataclass(frozen=True)
class DriftRule:
    """How an earlier task's threshold follows its anchors: ``fit x clip(ratio, 1/bound, bound) ** damping``,
    ``ratio`` = the anchors' ``statistic`` now / at calibration. The default is the plain ratio of image scores:
    benchmarks/bench_drift.py replayed 96 rules on the real stream's drift probe, and the one chosen on DEV
    (damping 0.5) did not hold up on REPORT (docs/thresholds.md, "Following the drift")."""

    statistic: str = "image"
    damping: float = 1.0
    bound: float | None = None

    def factor(self, ratio: float) -> float:
        """The scale applied to a task's calibration for a measured ``ratio`` (nan when it is unknown)."""
        if not math.isfinite(ratio) or ratio <= 0:
            return float("nan")
        if self.bound:
            ratio = min(max(ratio, 1.0 / self.bound), self.bound)
        return ratio ** self.damping


DRIFT_RULE = DriftRule()
AGNOSTIC_RULE = "max over the tasks' thresholds (no product gets more false alarms than at its own threshold)"


def anchor_side(latent_shape: tuple[int, ...]) -> int:
    """Side of the square latent crop an anchor keeps: a quarter of the latent, at least 8, at most all."""
    h, w = latent_shape[-2:]
    return int(min(h, w, max(8, h // 4)))


class CalibrationAnchors:
    """The calibration slice: a few never-replayed latent crops of each task's held-out normals."""

    def __init__(self, per_task: int, latent_shape: tuple[int, ...], image_size: int, seed: int,
                 statistic: str = DRIFT_RULE.statistic):
        if per_task < 0:
            raise EdgeadError(f"calibration anchors per task {per_task}: expected 0 or more")
        if statistic not in STATISTICS:
            raise EdgeadError(f"anchor statistic {statistic!r}: expected one of {', '.join(STATISTICS)}")
        self.per_task, self.seed, self.statistic = per_task, seed, statistic
        self.latent_shape = tuple(latent_shape)
        self.side = anchor_side(self.latent_shape)
        self.out_size = max(1, self.side * image_size // self.latent_shape[-1])
        self.codec = get_codec(ANCHOR_CODEC)
        self.encoded: dict[int, list[EncodedLatent]] = {}
        self.fit_scores: dict[int, float] = {}

    @property
    def crop_shape(self) -> tuple[int, ...]:
        return (self.latent_shape[0], self.side, self.side)

    def reserve_bytes(self, n_tasks: int) -> int:
        """Bytes the anchors of ``n_tasks`` tasks occupy (what a byte budget must set aside)."""
        return n_tasks * self.per_task * self.codec.bytes_per_sample(self.crop_shape)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for es in self.encoded.values() for e in es)

    def add(self, task_index: int, model, val_images: np.ndarray, pre) -> None:
        """Keep anchors of a task just calibrated, and their mean score under the current model."""
        if self.per_task == 0 or len(val_images) == 0:
            return
        rng = np.random.default_rng([self.seed, task_index, 7])
        pick = np.sort(rng.permutation(len(val_images))[: self.per_task])
        z = compute_latents(model, val_images[pick], pre).cpu().numpy()
        self.encoded[task_index] = [self.codec.encode(random_crop(x, self.side, rng)) for x in z]
        self.fit_scores[task_index] = self.score(model, task_index)

    def add_latents(self, task_index: int, model, latents: np.ndarray) -> None:
        """Keep anchors of a task known only by trunk latents (a device's buffer): crops of the first
        ``per_task`` of them, and their mean score under the current model."""
        if self.per_task == 0 or len(latents) == 0:
            return
        rng = np.random.default_rng([self.seed, task_index, 7])
        self.encoded[task_index] = [self.codec.encode(random_crop(np.asarray(x, np.float32), self.side, rng))
                                    for x in latents[: self.per_task]]
        self.fit_scores[task_index] = self.score(model, task_index)

    def score(self, model, task_index: int) -> float:
        """Mean statistic (image score, or map mean) of a task's anchors under ``model`` (nan without anchors)."""
        es = self.encoded.get(task_index)
        if not es:
            return float("nan")
        z = torch.from_numpy(np.stack([self.codec.decode(e) for e in es]).astype(np.float32))
        was = model.training
        model.eval()
        try:
            maps, s = model.predict_latent(z.to(next(model.parameters()).device), self.out_size)
        finally:
            model.train(was)
        return float(s.mean()) if self.statistic == "image" else float(maps.mean())

    def ratio(self, model, task_index: int) -> float:
        """Drift of a task's normal scores since its calibration: mean anchor score now / at calibration."""
        before = self.fit_scores.get(task_index, float("nan"))
        now = self.score(model, task_index)
        return now / before if math.isfinite(before) and before > 0 and math.isfinite(now) else float("nan")

    def save(self, path: Path) -> None:
        arrays = {"tasks": np.array(sorted(self.encoded), np.int64), "statistic": np.array(self.statistic),
                  "fit_scores": np.array([self.fit_scores[t] for t in sorted(self.encoded)], np.float64)}
        for t, es in self.encoded.items():
            for k, e in enumerate(es):
                arrays[f"t{t}_{k}"] = np.frombuffer(e.to_bytes(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(path, lambda f: f.write(buf.getvalue()))

    def load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as z:
            tasks = [int(t) for t in z["tasks"]]
            # the statistic the fit scores were taken with (files written before it was recorded: image)
            self.statistic = str(z["statistic"]) if "statistic" in z.files else "image"
            self.fit_scores = {t: float(s) for t, s in zip(tasks, z["fit_scores"], strict=True)}
            self.encoded = {t: [EncodedLatent.from_bytes(z[k].tobytes()) for k in _anchor_keys(z.files, t)]
                            for t in tasks}


def _anchor_keys(files: list[str], task: int) -> list[str]:
    """The npz keys of a task's anchors (t{task}_{k}), in k order."""
    pre = f"t{task}_"
    return sorted((k for k in files if k.startswith(pre) and k[len(pre):].isdigit()), key=lambda k: int(k[len(pre):]))


def rescale(fit: Calibration, ratio: float) -> Calibration:
    """A task's calibration with its scores scaled by the drift ``ratio`` (unchanged when it is unknown)."""
    if not math.isfinite(ratio) or ratio <= 0:
        return replace(fit, drift_ratio=None, fit_threshold=fit.threshold)
    return replace(fit, threshold=fit.threshold * ratio, score_mean=fit.score_mean * ratio,
                   score_std=fit.score_std * ratio, score_min=fit.score_min * ratio, score_max=fit.score_max * ratio,
                   drift_ratio=ratio, fit_threshold=fit.threshold)


def task_agnostic(cals: list[Calibration]) -> Calibration:
    """One calibration for images of any task: the max threshold, the widest score range, pooled mean/std."""
    ok = [c for c in cals if math.isfinite(c.threshold)]
    if not ok:
        return Calibration()
    n = np.array([max(c.n_images, 1) for c in ok], float)
    means, stds = np.array([c.score_mean for c in ok]), np.array([c.score_std for c in ok])
    mean = float(np.average(means, weights=n))
    return Calibration(threshold=max(c.threshold for c in ok), score_mean=mean,
                       score_std=float(np.sqrt(np.average(stds ** 2 + (means - mean) ** 2, weights=n))),
                       score_min=min(c.score_min for c in ok), score_max=max(c.score_max for c in ok),
                       quantile=ok[0].quantile, n_images=int(sum(c.n_images for c in ok)), rule=AGNOSTIC_RULE)

