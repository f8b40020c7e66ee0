"""Feature-selective fine-tuning: the student learns (and the detector scores) on the top p% channels of
each level only, while the categories arrive one after another (sequential fine-tuning, no replay, as in
the thesis). One curve: final image and pixel F1, averaged over all tasks, against p.

Which channels. They are chosen once, by PCA importance on the *first* task's normal training images, and
kept for the whole stream: a deployed detector has one fixed channel set (a device cannot re-select on
data it has not seen yet), and every earlier task must still be scored with the channels the final model
uses. JSON records how much each later task's own top-p% selection overlaps the first task's.

How the distance is restricted. Features are L2-normalised over *all* channels of the level first and
the selected components are compared afterwards. Normalising after selecting would turn a single
selected channel (1% of MCUNet's 24/40/96 channels is one channel per level) into its sign, a distance
of 0 or 2; with all channels selected both orders equal the standard STFPM loss and map exactly.

Fairness across p: every p starts from the same seeded student, trains on the same batches (the trainer
seeds each task by (seed, task index) like `edgead train`) and selects its epoch on the same pseudo-defects.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgead.analysis.channels import (
    DEFAULT_MAX_PATCHES,
    DEFAULT_VARIANCE,
    category_importance,
    check_pca_options,
    top_channels,
)
from edgead.analysis.features import build_teacher_student, check_percents, percent_key
from edgead.data.stream import TaskData, TaskStream
from edgead.engine.evaluate import evaluate_split
from edgead.engine.trainer import TrainConfig, train_task
from edgead.errors import EdgeadError
from edgead.models.anomaly_map import combine_levels
from edgead.models.teacher_student import DetectorConfig, TeacherStudent
from firmware_sim.atomic import atomic_write_json
from firmware_sim.preprocess import Preprocess

FINAL_METRICS = ("image_f1", "pixel_f1", "image_auroc", "pixel_auroc")


def _selected_difference(t: torch.Tensor, s: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    d = F.normalize(t, p=2, dim=1) - F.normalize(s, p=2, dim=1)
    if idx.numel() == d.shape[1]:  # every channel: the plain detector's tensor, same layout and sum order
        return d
    return d.index_select(1, idx)


def selected_level_distances(teacher: list[torch.Tensor], student: list[torch.Tensor],
                             channels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per level (N, H, W): 0.5 * squared distance of the normalised features over the selected channels."""
    return [0.5 * (_selected_difference(t, s, idx) ** 2).sum(dim=1)
            for t, s, idx in zip(teacher, student, channels, strict=True)]


def selected_st_loss(teacher: list[torch.Tensor], student: list[torch.Tensor],
                     channels: Sequence[torch.Tensor]) -> torch.Tensor:
    """The STFPM loss on the selected channels. Written in the same arithmetic order as
    edgead.models.anomaly_map.st_loss, so with every channel selected it is bit-identical to it and a
    p = 100% run reproduces `edgead train --strategy finetune` exactly."""
    total = teacher[0].new_zeros(())
    for t, s, idx in zip(teacher, student, channels, strict=True):
        h, w = t.shape[-2:]
        total = total + 0.5 / (h * w) * (_selected_difference(t, s, idx) ** 2).sum(dim=(1, 2, 3)).mean()
    return total


class ChannelSelectedDetector(TeacherStudent):
    """A teacher-student whose training loss and anomaly map use only the given channels of each level.

    Only `loss_from_latent` and `predict_latent` change, so the standard trainer, model selection and
    test evaluation work on it unchanged."""

    def __init__(self, config: DetectorConfig, channels: Sequence[Sequence[int]], **kwargs):
        super().__init__(config, **kwargs)
        self.set_channels(channels)

    def level_widths(self) -> list[int]:
        with torch.no_grad():
            z = self.latent(torch.zeros(1, 3, self.config.image_size, self.config.image_size))
            return [f.shape[1] for f in self.teacher_features(z)]

    def set_channels(self, channels: Sequence[Sequence[int]]) -> None:
        widths = self.level_widths()
        if len(channels) != len(widths):
            raise EdgeadError(f"{len(channels)} channel lists for {len(widths)} levels "
                              f"{list(self.config.levels)}: expected one list per level")
        for i, (idx, width) in enumerate(zip(channels, widths, strict=True)):
            t = torch.as_tensor(np.asarray(idx), dtype=torch.long).reshape(-1)
            bad = t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= width
            if bad or len(set(t.tolist())) != t.numel():
                raise EdgeadError(f"level {self.config.levels[i]}: channels {t.tolist()} must be distinct "
                                  f"indices in 0..{width - 1}, at least one")
            # Kept in channel order (not importance order): with every channel selected the distance then
            # sums in the standard order and is bit-identical to the unselected detector's.
            # A buffer, so .to(device) moves it with the model; not persistent: checkpoints stay standard.
            self.register_buffer(f"channels_{i}", torch.sort(t).values, persistent=False)
        self._n_levels = len(widths)

    @property
    def channels(self) -> list[torch.Tensor]:
        return [getattr(self, f"channels_{i}") for i in range(self._n_levels)]

    def loss_from_latent(self, z: torch.Tensor, t_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        t = t_feats if t_feats is not None else self.teacher_features(z)
        return selected_st_loss(t, self.student_features(z), self.channels)

    @torch.no_grad()
    def predict_latent(self, z: torch.Tensor,
                       out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        d = selected_level_distances(self.teacher_features(z), self.student_features(z), self.channels)
        # the model's own score post-processing (config.score), as the standard detector scores
        return self.post_process(combine_levels(d, out_size or self.config.image_size))

    @classmethod
    def from_detector(cls, model: TeacherStudent,
                      channels: Sequence[Sequence[int]]) -> ChannelSelectedDetector:
        """A copy of `model` (same teacher, same student weights) restricted to `channels`."""
        new = cls(model.config, channels, load_teacher=False)
        new.load_state_dict(model.state_dict())
        new.calibration = copy.deepcopy(model.calibration)
        return new


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return len(set(a.tolist()) & set(b.tolist())) / len(a)


def run_selective(stream: TaskStream, det: DetectorConfig, train_cfg: TrainConfig, percents: list[float],
                  out: str | Path, *, weights: str | Path | None = None, variance: float = DEFAULT_VARIANCE,
                  max_patches: int = DEFAULT_MAX_PATCHES, log=print) -> dict:
    """For each p: sequential fine-tuning over the stream on the top p% channels, then every task's test
    metrics with the final model. Writes OUT/selective.json and OUT/selective_f1.png."""
    from edgead.analysis.plots import plot_selective_f1

    percents = check_percents(percents)
    check_pca_options(variance, max_patches)
    out = Path(out)
    pre = Preprocess(image_size=det.image_size)
    dev = train_cfg.device
    base = build_teacher_student(det, weights, train_cfg.seed)
    cache: dict[int, TaskData] = {}

    def data(i: int) -> TaskData:
        if i not in cache:
            cache[i] = stream.tasks[i].load(pre, val_fraction=train_cfg.val_fraction, seed=train_cfg.seed)
        return cache[i]

    def importance(i: int):
        return category_importance(base, data(i).train.images, pre, variance=variance,
                                   max_patches=max_patches, seed=train_cfg.seed, device=dev)

    first_imps = importance(0)
    own_imps = {j: importance(j) for j in range(1, len(stream))}
    levels = [str(lv) for lv in det.levels]
    runs = {}
    for p in percents:
        key = percent_key(p)
        chans = [top_channels(imp.importance, p) for imp in first_imps]
        counts = ", ".join(f"{len(c)} of {len(imp.importance)}"
                           for c, imp in zip(chans, first_imps, strict=True))
        log(f"selective: top {key}% = {counts} channels at levels {', '.join(levels)}")
        model = ChannelSelectedDetector.from_detector(base, chans)
        trained = []
        for task in stream:
            d = data(task.index)
            rep = train_task(model, d.train.images, d.val.images, pre, train_cfg,
                             seed=train_cfg.seed * 1000 + task.index, desc=f"p={key} {task.name}")
            trained.append({"task": task.name, "selected_epoch": rep["selected_epoch"],
                            "train_seconds": rep["train_seconds"], "final_loss": rep["history"][-1]["loss"]})
        t0 = time.perf_counter()
        final = {task.name: evaluate_split(model, data(task.index).test, pre, dev) for task in stream}
        runs[key] = {
            "percent": p,
            "channels": {lv: c.tolist() for lv, c in zip(levels, chans, strict=True)},
            "n_channels": {lv: len(c) for lv, c in zip(levels, chans, strict=True)},
            **{m: _mean([final[t][m] for t in stream.names]) for m in FINAL_METRICS},
            "final": final,
            "train": trained,
            "eval_seconds": time.perf_counter() - t0,
            "selection_overlap": {stream.names[j]: {lv: _overlap(c, top_channels(imp.importance, p))
                                                    for lv, c, imp in zip(levels, chans, own, strict=True)}
                                  for j, own in own_imps.items()},
        }
        log(f"  image F1 {_fmt(runs[key]['image_f1'])}  pixel F1 {_fmt(runs[key]['pixel_f1'])} "
            "(final, averaged over tasks)")
    curve = {"percent": percents, **{m: [runs[percent_key(p)][m] for p in percents] for m in FINAL_METRICS}}
    figure = plot_selective_f1(stream.names, det, curve, out / "selective_f1.png").name
    result = {
        "analysis": "selective",
        "config": {"detector": det.to_dict(),
                   "train": {k: v for k, v in train_cfg.to_dict().items() if k != "progress"},
                   "percents": percents, "variance": variance, "max_patches": max_patches,
                   "strategy": "finetune (sequential, no replay)",
                   "selection": f"top p% channels per level by PCA importance on the first task's "
                                f"({stream.names[0]}) normal training images, fixed for the stream",
                   "distance": "features L2-normalised over all channels, then restricted to the selection"},
        "tasks": stream.names,
        "curve": curve,
        "percents": runs,
        "figures": {"f1": figure},
    }
    atomic_write_json(out / "selective.json", result)
    return result


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
