"""The continual learner: a run's state and one `learn(task)` step, made of separate named parts.

State: the model and its preprocessing, the replay memory, the calibration anchors, each task's calibration
as fitted, the metric rows m[i][:], timings and what the memory held after each task. One step, for task i:

  train      the student on task i's normals (+ replay, or every task seen for ``joint``)
  calibrate  task i on its held-out normals; every earlier task recalibrated from its anchor
  memory     the budget re-shared among the i + 1 tasks seen, task i's share filled
  evaluate   every task seen whose test data is reachable, at its own threshold (+ plugins' extra numbers)
  persist    checkpoint, memory, anchors, results.json and state.json after task i, each atomic

Nothing in a step depends on how many tasks will follow, and task i's training depends only on (seed, i) and
the saved state: a stream trained in one call, the same tasks learned one `edgead learn` at a time, and a run
resumed after a kill all end with the same numbers. Evaluation plugins (`EvaluationPlugin`) add research
numbers to each row (benchmarks/bench_real_stream.py adds thresholds that are never deployed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from edgead.cl.calibration import DRIFT_RULE, CalibrationAnchors, rescale, task_agnostic
from edgead.cl.calibration_set import CalibrationSet
from edgead.cl.config import ReplayConfig
from edgead.cl.deployed import deployed_row
from edgead.cl.memory import ImageMemory, LatentMemory, ReplayMemory
from edgead.cl.run_log import RunLog, record_epochs
from edgead.cl.sources import open_task
from edgead.data.loading import LoadedSplit
from edgead.data.stream import TaskData
from edgead.engine.checkpoint import load_checkpoint, save_checkpoint
from edgead.engine.evaluate import evaluate_split, fit_calibration
from edgead.engine.trainer import TrainConfig, train_task
from edgead.errors import EdgeadError
from edgead.models.cost import detector_cost
from edgead.models.teacher_student import Calibration, DetectorConfig, TeacherStudent
from firmware_sim.preprocess import Preprocess
from firmware_sim.replay_buffer import FILE_HEADER_SIZE, RECORD_OVERHEAD, TASK_RECORD_SIZE


class EvaluationPlugin(Protocol):
    """Called for every evaluation of task j after task i; may add keys to ``row`` (never change the run)."""

    def after_evaluation(self, learner: Learner, i: int, j: int, data: TaskData, scores: np.ndarray,
                         row: dict) -> None: ...


def checkpoint_path(out: Path, i: int) -> Path:
    return out / "checkpoints" / f"task_{i:02d}.pt"


def memory_path(out: Path, i: int, suffix: str) -> Path:
    return out / "memory" / f"after_task_{i:02d}.{suffix}"


def anchors_path(out: Path, i: int) -> Path:
    return out / "calibration" / f"after_task_{i:02d}.npz"


def calibration_set_path(out: Path, i: int) -> Path:
    return out / "calibration" / f"set_after_task_{i:02d}.npz"


class Learner:
    """A run's continual state. Build it with the run's detector and memory settings, `restore` a saved run,
    then call `learn` once per new task; ``persist`` (a callable) writes the files after each step."""

    def __init__(self, out: Path, det: DetectorConfig, replay: ReplayConfig, train: TrainConfig, *,
                 weights: str | Path | None = None, restoring: bool = False, skip_bad: bool = False,
                 log: Callable[[str], None] = print, plugins: Sequence[EvaluationPlugin] = ()):
        self.out, self.replay, self.train_cfg = Path(out), replay, train
        # every progress line also goes to RUN/train.log (edgead.cl.run_log)
        self.skip_bad, self.log, self.plugins = skip_bad, RunLog(self.out, log), list(plugins)
        torch.manual_seed(train.seed)
        # A restored run takes every weight from its checkpoint: the ImageNet teacher is not read again.
        self.model = TeacherStudent(det, weights=weights, load_teacher=not restoring)
        self.pre = Preprocess(image_size=det.image_size, resize_mode=train.resize)
        self.cost = detector_cost(self.model)
        self.latent_shape = tuple(self.cost["latent_shape"])
        self.anchors = CalibrationAnchors(replay.calibration_anchors, self.latent_shape, det.image_size, train.seed)
        # --recalibrate refit: every held-out normal's latent, host memory outside the budget (calibration_set)
        self.calset = CalibrationSet(train.threshold_rule, det.image_size) if replay.recalibrate == "refit" else None
        self.check_budget(1)
        self.memory = self._make_memory()
        self.names: list[str] = []
        self.sources: list[dict] = []
        self.fit_cals: list[Calibration] = []  # each task's calibration as fitted right after it
        self.cals: list[Calibration] = []  # each task's calibration now (recalibrated from its anchor)
        self.rows: list[list[dict]] = []
        self.timings: list[dict] = []
        self.holdings: list[dict] = []  # after each task: what the memory holds per task name
        self.memory_file: Path | None = None  # set by a device buffer's merge into the tasks already kept
        self._tasks: dict[int, object] = {}
        self._data: dict[int, TaskData] = {}

    # -- state ----------------------------------------------------------------------------------------------
    def memory_budget(self, n_tasks: int) -> int | None:
        """The replay memory's bytes while ``n_tasks`` tasks are kept: the budget less their anchors."""
        if self.replay.budget_bytes is None or not self.replay.keeps_memory:
            return None
        return self.replay.budget_bytes - self.anchors.reserve_bytes(n_tasks)

    def check_budget(self, n_tasks: int) -> None:
        """A clear error, before anything trains, when ``n_tasks`` tasks leave no room for a replay sample."""
        budget = self.memory_budget(n_tasks)
        # a latent buffer needs at least its file header, a task record and a record header
        least = FILE_HEADER_SIZE + TASK_RECORD_SIZE + RECORD_OVERHEAD if self.replay.strategy != "replay" else 1
        if budget is not None and budget < least:
            reserve = self.anchors.reserve_bytes(n_tasks)
            raise EdgeadError(f"replay budget {self.replay.budget_bytes:,} B is too small: smaller than one sample "
                              f"plus the calibration anchors it holds ({reserve:,} B: {n_tasks} tasks x "
                              f"{self.replay.calibration_anchors}); use a larger budget or fewer calibration anchors")

    def _make_memory(self) -> ReplayMemory | None:
        replay, budget = self.replay, self.memory_budget(1)
        if replay.device_buffer is not None:
            return LatentMemory.from_file(replay.device_buffer, self.train_cfg.seed, budget)
        if replay.strategy == "replay":
            return ImageMemory(self.pre.image_size, budget_bytes=budget, memory_size=replay.memory_size,
                               seed=self.train_cfg.seed)
        if replay.strategy == "compressed-replay":
            side = replay.crop_side(self.latent_shape, budget, 1) if replay.latent_crop.isdigit() else 0
            memory = LatentMemory.new(replay.codec_obj, self.latent_shape, budget_bytes=budget,
                                      memory_size=replay.memory_size, seed=self.train_cfg.seed,
                                      policy=replay.policy, crop_side=side)
            if replay.device_trunk is not None:
                memory.use_device_trunk(replay.device_trunk, self.latent_shape, self.pre.image_size)
            return memory
        return None

    def restore(self, done: int, memory_file: str | None = None) -> None:
        """Continue from the files written after task ``done`` - 1 (checkpoint, memory, anchors); the memory
        from ``memory_file`` (relative to the run) when a device buffer's merge wrote a later one."""
        if done == 0:
            return
        self.model, self.pre, meta = load_checkpoint(checkpoint_path(self.out, done - 1))
        self.rows, self.timings = meta["rows"], meta["timings"]
        self.fit_cals = [Calibration.from_dict(c) for c in meta.get("fit_calibrations", [])]
        self.cals = [Calibration.from_dict(c) for c in meta.get("calibrations", [])] or list(self.fit_cals)
        self.holdings = meta.get("holdings", [])
        self.names = list(meta.get("tasks", []))[:done]
        self.sources = list(meta.get("sources", []))[:done]
        if self.memory is not None:
            path = self.out / memory_file if memory_file else memory_path(self.out, done - 1, self.memory.file_suffix)
            self.memory.load(path, skip_bad=self.skip_bad, log=self.log)
            shape = getattr(getattr(self.memory, "buffer", None), "shape", None)
            if shape is not None and tuple(shape[-2:]) != self.latent_shape[-2:]:  # the records' crop, as saved
                self.memory.crop_side = int(shape[-1])
        if self.replay.calibration_anchors:
            saved = anchors_path(self.out, done - 1)
            if not saved.is_file():
                raise EdgeadError(f"cannot continue {self.out}: {saved} is missing (a run from before per-task "
                                  f"calibration); start it again in a new --out")
            self.anchors.load(saved)
        if self.calset is not None:
            saved = calibration_set_path(self.out, done - 1)
            if not saved.is_file():
                raise EdgeadError(f"cannot continue {self.out} with --recalibrate refit: {saved} is missing")
            self.calset.load(saved)

    def data(self, j: int) -> TaskData:
        """Task j's train / held-out / test splits, read once (its task reopened from its record if needed)."""
        if j not in self._data:
            task = self._tasks.get(j) or open_task(self.sources[j], self.names[j])
            t = self.train_cfg
            self._data[j] = task.load(self.pre, val_fraction=t.val_fraction, seed=t.seed, skip_bad=self.skip_bad)
        return self._data[j]

    # -- one step ---------------------------------------------------------------------------------------------
    def learn(self, task, source: dict, persist: Callable[[Learner], None] | None = None) -> list[dict]:
        """Train, calibrate, update the memory, evaluate and persist task ``task`` (index: tasks seen so far).
        Returns the new metric row."""
        i = len(self.names)
        self.names.append(task.name)
        self.sources.append(source)
        self._tasks[i] = task
        d = self.data(i)
        report = self.train_part(i, d)
        record_epochs(self.out, i, task.name, report.get("history", []), self.log)  # RUN/epochs.csv
        self.calibrate_part(i, d)
        self.memory_part(i, d)
        t_eval = time.perf_counter()
        self.rows.append(self.evaluate_part(i))
        report["eval_seconds"] = time.perf_counter() - t_eval
        report.pop("history", None)
        self.timings.append(report)
        if persist is not None:
            persist(self)
        return self.rows[-1]

    def train_part(self, i: int, d: TaskData) -> dict:
        train_split, val_split = d.train, d.val
        if self.replay.strategy == "joint":
            train_split = LoadedSplit.concat([self.data(k).train for k in range(i + 1)])
            val_split = LoadedSplit.concat([self.data(k).val for k in range(i + 1)])
        self.log(f"task {i + 1}: {self.names[i]} ({len(train_split)} train, {len(val_split)} val, "
                 f"strategy {self.replay.strategy})")
        source = self.memory.source() if self.memory is not None and i > 0 else None
        report = train_task(self.model, train_split.images, val_split.images, self.pre, self.train_cfg,
                            replay=source, seed=self.train_cfg.seed * 1000 + i, desc=self.names[i])
        if report.get("budget_floor"):  # said, not silent: the user asked for no budget, the floor chose one
            self.log(f"  budget floor: {report['steps']} optimiser steps at batch {report['batch_size']} (the default "
                     f"epochs give fewer than --min-steps {self.train_cfg.min_steps} on {len(train_split)} images)")
        return report

    def calibrate_part(self, i: int, d: TaskData) -> None:
        """Task i fitted on its held-out normals; earlier tasks scaled by their anchors' drift."""
        t = self.train_cfg
        self.fit_cals.append(fit_calibration(self.model, d.val, self.pre, t.device, rule=t.threshold_rule, seed=i))
        self.anchors.add(i, self.model, d.val.images, self.pre)
        if self.calset is not None:
            self.calset.add(i, self.model, d.val.images, self.pre)
        self.recalibrate()

    def drift_factor(self, j: int) -> float:
        """How far task j's threshold moved since it was fitted: the threshold rule refitted on its stored
        held-out latents (--recalibrate refit), else its anchors' drift as DRIFT_RULE says."""
        if self.calset is not None and self.calset.has(j):
            return self.calset.ratio(self.model, j)
        return DRIFT_RULE.factor(self.anchors.ratio(self.model, j))

    def recalibrate(self) -> None:
        """Every task's threshold now: the last one as fitted, the earlier ones followed by ``drift_factor``
        (edgead.cl.calibration, edgead.cl.calibration_set)."""
        last = len(self.fit_cals) - 1
        self.cals = [c if j == last else rescale(c, self.drift_factor(j)) for j, c in enumerate(self.fit_cals)]
        self.model.calibration = task_agnostic(self.cals)
        self.model.calibration.per_task = {self.names[j]: asdict(c) for j, c in enumerate(self.cals)}

    def memory_part(self, i: int, d: TaskData) -> None:
        """Re-share the budget among the i + 1 tasks seen (crops re-chosen), then keep task i's share."""
        if self.memory is None:
            return
        budget = self.memory_budget(i + 1)
        side = self.replay.crop_side(self.latent_shape, budget, i + 1, self.names[:i + 1]) if budget is not None else 0
        self.memory.reshare(i, budget, side)
        self.memory.update(i, self.model, d.train.images, self.pre)
        if isinstance(self.memory, LatentMemory):
            self.memory.name_tasks(self.names)
        self.holdings.append(self.memory_holdings())

    def memory_holdings(self) -> dict:
        """What each task holds now, by name (tasks a device buffer brought before this run: device-task-N)."""
        return {(self.names[t] if 0 <= t < len(self.names) else f"device-task{t}"): h
                for t, h in self.memory.holdings().items()}

    def evaluate_part(self, i: int) -> list[dict]:
        """Every task seen whose test data is reachable; the others say why and keep their anchor threshold."""
        row = []
        for j in range(i + 1):
            try:
                dj = self.data(j)
            except (EdgeadError, OSError) as e:
                self.log(f"  {self.names[j]}: not evaluated ({e}); its threshold stays recalibrated from its anchor")
                thr = self.cals[j].threshold
                row.append({"evaluated": False, "reason": str(e), "threshold_task": thr if np.isfinite(thr) else None})
                continue
            res = evaluate_split(self.model, dj.test, self.pre, self.train_cfg.device, return_outputs=True)
            entry = {**res["metrics"], **deployed_row(dj.test.labels, res["scores"], n_normals=len(dj.val),
                                                      task=self.cals[j].threshold)}
            for plugin in self.plugins:
                plugin.after_evaluation(self, i, j, dj, res["scores"], entry)
            row.append(entry)
        self.log("  " + "  ".join(f"{self.names[j]}: " + _short(r) for j, r in enumerate(row)))
        return row

    def save_files(self, i: int) -> Path | None:
        """Checkpoint, memory and anchors after task i (each atomic); returns the memory file written. After
        a merge into the tasks already kept (``memory_file`` set) only that memory file is written."""
        if self.memory_file is not None:
            self.memory.save(self.memory_file)
            return self.memory_file
        mem_path = None
        if self.memory is not None:
            mem_path = memory_path(self.out, i, self.memory.file_suffix)
            self.memory.save(mem_path)
        if self.replay.calibration_anchors:
            self.anchors.save(anchors_path(self.out, i))
        if self.calset is not None:
            self.calset.save(calibration_set_path(self.out, i))
        save_checkpoint(checkpoint_path(self.out, i), self.model, self.pre, task_index=i, tasks=self.names,
                        rows=self.rows, timings=self.timings, fit_calibrations=[asdict(c) for c in self.fit_cals],
                        calibrations=[asdict(c) for c in self.cals], holdings=self.holdings, sources=self.sources,
                        crop_side=getattr(self.memory, "crop_side", 0))
        return mem_path


def _short(r: dict) -> str:
    if r.get("evaluated") is False:
        return "not evaluated"
    return f"img {r['image_auroc']:.3f} pix " + ("n/a" if r["pixel_auroc"] is None else f"{r['pixel_auroc']:.3f}")
