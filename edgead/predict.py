"""Scoring images on the host with a run's torch checkpoint: `edgead predict`, `Detector.predict`.

`HostDetector` has the interface of `firmware_sim.device.Device` that `firmware_sim.commands.score_files`
uses (`infer` -> Result, `normalize`, `format`, `interpreter`, `threshold`), so `edgead predict` prints the
same JSON lines and draws the same overlays as `edgead device run`, without an export first. The image
path is the device's (`firmware_sim.device.image_pixels`), the score normalisation its `normalize_score`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgead.errors import EdgeadError
from firmware_sim.anomaly_map import ScorePost
from firmware_sim.device import Result, image_pixels, image_rgb, normalize_score
from firmware_sim.preprocess import Preprocess


class HostDetector:
    """A trained teacher-student model scoring one image at a time, as a device does."""

    format = "torch"

    def __init__(self, model, pre: Preprocess, device: str = "cpu"):
        """Args:
            model: a TeacherStudent with its calibration (threshold, score range) fitted.
            pre: its preprocessing.
            device: torch device.
        """
        self.model = model.to(device).eval()
        self.preprocess = pre
        self.device = device
        cal = model.calibration
        self.threshold = float(cal.threshold)
        self._lo, self._hi = cal.score_min, cal.score_max
        self.interpreter = f"torch {torch.__version__}"
        self.task_name: str | None = None  # None: the task-agnostic threshold

    def use_task(self, name: str) -> None:
        """Decide with task ``name``'s own threshold and score range (as `device run --task NAME` does)."""
        per = self.model.calibration.per_task
        if not per:
            raise EdgeadError(f"--task {name}: this checkpoint has no per-task thresholds (a run trained before "
                              "per-task calibration); leave --task out to use its one threshold")
        if name not in per:
            raise EdgeadError(f"--task {name!r}: not a task of this checkpoint; its tasks: {', '.join(per)}")
        cal = per[name]
        self.task_name = name
        self.threshold = float(cal["threshold"])
        self._lo, self._hi = cal.get("score_min"), cal.get("score_max")

    def normalize(self, score: float | np.ndarray) -> float | np.ndarray:
        """Scores (or a map) -> 0..1 with the threshold at 0.5 (as the device normalises)."""
        return normalize_score(score, self._lo, self._hi, self.threshold)

    def pixels(self, image: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
        """Any image -> its model inputs (K, S, S, 3) uint8 (K = 1 unless the run uses --resize tile)."""
        return image_pixels(image, self.preprocess)

    @torch.no_grad()
    def infer(self, image: str | os.PathLike | Image.Image | np.ndarray) -> Result:
        """Score one image (path, PIL image or uint8 array).

        Returns:
            firmware_sim.device.Result: score, normalised score, decision, map (S, S), latency, pixels.
        """
        from edgead.engine.tensors import predict_images

        t0 = time.perf_counter()
        img = image_rgb(image)
        x = self.preprocess.views(img)  # one view, or the tiles of a long image (as the device)
        t1 = time.perf_counter()
        maps, _ = predict_images(self.model, x, self.preprocess, device=self.device)
        frame, score = self.preprocess.merge(maps, img.size, ScorePost.parse(self.model.config.score))
        t2 = time.perf_counter()
        return Result(score, self.normalize(score), bool(score > self.threshold), frame, 1000.0 * (t2 - t0),
                      {"preprocess": 1000.0 * (t1 - t0), "model": 1000.0 * (t2 - t1)}, None,
                      x[0] if len(x) == 1 else self.preprocess.frame_uint8(img))


def checkpoint_of(run_dir: str | Path, task: str | int | None = None,
                  option: str = "--task") -> tuple[Path, int, list[str]]:
    """The checkpoint file of a run after a task given by name or index (default: the last completed);
    ``option`` is how the user gave ``task`` (--task, --checkpoint), for the error message.

    Returns:
        (checkpoint path, task index, the run's task names).
    """
    from edgead.cl.results import read_results

    run_dir = Path(run_dir)
    res = read_results(run_dir)
    names, done = list(res["tasks"]), int(res["completed_tasks"])
    if done < 1:
        raise EdgeadError(f"{run_dir}: no task completed yet, nothing to predict with")
    if task is None:
        i = done - 1
    elif str(task) in names[:done]:
        i = names.index(str(task))
    elif str(task).lstrip("-").isdigit() and 0 <= int(task) < done:
        i = int(task)
    else:
        raise EdgeadError(f"{option} {task}: expected a completed task of {run_dir}: a name in "
                          f"{names[:done]} or an index 0..{done - 1}")
    return run_dir / "checkpoints" / f"task_{i:02d}.pt", i, names


def load_host_detector(run_dir: str | Path, task: str | int | None = None, device: str = "cpu",
                       option: str = "--task") -> HostDetector:
    """A run's checkpoint (after `task`, default the last) ready to score images; ``option`` names the user's
    option in errors."""
    from edgead.engine.checkpoint import load_checkpoint

    ckpt, _, _ = checkpoint_of(run_dir, task, option)
    model, pre, _ = load_checkpoint(ckpt)
    if not np.isfinite(model.calibration.threshold):
        raise EdgeadError(f"{ckpt}: no calibrated threshold (the run had no held-out normals); retrain with "
                          "--val-fraction above 0")
    return HostDetector(model, pre, device)


def predict_run(run_dir: str | Path, images: str | Path, task: str | None = None,
                out: str | Path | None = None, emit=lambda d: None, warn=None, device: str = "cpu",
                checkpoint: str | int | None = None, map_frame: str = "image") -> dict:
    """Score an image file or every image in a folder with a run's checkpoint.

    Args:
        run_dir: the run folder (edgead train --out).
        images: an image file or a folder (searched recursively).
        task: decide with this product's own threshold (a task name; default: the task-agnostic threshold).
        checkpoint: the checkpoint after this task (name or index; default the last).
        out: folder for one overlay PNG per image.
        map_frame: overlays at the input image's size ("image") or in the model's square frame ("model").
        emit: receives each per-image dict (the JSON line).
        warn: receives each warning message.
        device: torch device.

    Returns:
        The summary: images, skipped, anomalous, format, interpreter, threshold.
    """
    from firmware_sim import commands

    warn = warn or commands._stderr
    files = commands.list_images(images, warn)
    detector = load_host_detector(run_dir, checkpoint, device, option="--checkpoint")
    if task is not None:
        detector.use_task(str(task))
    summary = commands.score_files(detector, files, images, out, emit, warn, map_frame=map_frame)
    return {**summary, "task": detector.task_name}
