"""Running a strategy over a task stream, with a checkpoint after each task and exact resume.

After task i: the student is trained (current data + replay), calibrated on the task's held-out normals,
the earlier tasks are recalibrated from their calibration anchors (edgead.cl.calibration), the replay memory
takes its share of task i, every task seen so far is evaluated (with the deployed F1 at each kind of
threshold), and the checkpoint, memory file and run state are written atomically. Task i's training depends
only on (seed, i) and the saved state, so `--resume` after a kill ends with the results of an uninterrupted run.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from edgead.cl.calibration import AGNOSTIC_RULE, ANCHOR_CODEC, CalibrationAnchors, rescale, task_agnostic
from edgead.cl.config import ReplayConfig
from edgead.cl.deployed import deployed_row, deployed_summary
from edgead.cl.memory import ImageMemory, LatentMemory, ReplayMemory
from edgead.cl.results import SCHEMA, summarise
from edgead.cl.run_folder import STATE_NAME, check_new_run_folder, config_differences, config_path, read_state
from edgead.data.checks import check_stream_masks
from edgead.data.loading import LoadedSplit
from edgead.data.stream import TaskData, TaskStream
from edgead.engine.checkpoint import checkpoint_bytes, load_checkpoint, save_checkpoint
from edgead.engine.evaluate import evaluate_split, fit_calibration
from edgead.engine.trainer import TrainConfig, train_task
from edgead.errors import EdgeadError
from edgead.models.cost import detector_cost
from edgead.models.teacher_student import Calibration, DetectorConfig, TeacherStudent
from edgead.outputs import check_writable, writing
from firmware_sim.atomic import atomic_write_json
from firmware_sim.preprocess import Preprocess


def _make_memory(replay: ReplayConfig, det: DetectorConfig, latent_shape: tuple[int, ...], seed: int,
                 n_tasks: int, budget_bytes: int | None) -> ReplayMemory | None:
    """The strategy's memory; ``budget_bytes`` is the replay budget less what calibration reserves. Latents are
    cropped when the budget holds no whole one per task (ReplayConfig.latent_crop)."""
    if replay.device_buffer is not None:
        return LatentMemory.from_file(replay.device_buffer, seed, budget_bytes)
    if replay.strategy == "replay":
        return ImageMemory(det.image_size, budget_bytes=budget_bytes, memory_size=replay.memory_size, seed=seed)
    if replay.strategy == "compressed-replay":
        return LatentMemory.new(replay.codec_obj, latent_shape, budget_bytes=budget_bytes,
                                memory_size=replay.memory_size, seed=seed, policy=replay.policy, max_tasks=n_tasks,
                                crop_side=replay.crop_side(latent_shape, budget_bytes, n_tasks))
    return None


def run_stream(stream: TaskStream, det: DetectorConfig, train: TrainConfig, replay: ReplayConfig | None = None,
               out: Path | str | None = None, *, weights: str | Path | None = None, resume: bool = False,
               skip_bad: bool = False, command: str | None = None, force: bool = False, log=print) -> dict:
    """Train ``det`` over the tasks of ``stream`` in order, with the strategy and memory of ``replay``.

    Args:
        stream: the tasks (categories of one dataset root), in training order.
        det: the detector's architecture (model, backbone, levels, bootstrap, image size).
        train: the training loop's settings (epochs, batch, optimiser, seed, replay ratio, ...).
        replay: the strategy and its replay memory (default: fine-tuning, nothing kept).
        out: the run folder: checkpoints/, memory/, state.json and results.json are written there.
        weights: the backbone's ImageNet weights file or folder (default: the usual search).
        resume: continue a killed run from its last completed task (the configuration must match).
        skip_bad: skip unreadable images (and, on resume, damaged replay records) with a warning instead of
            stopping.
        command: the command line recorded in results.json (default: sys.argv).
        force: start a run in a folder that holds other files (never over a run: that needs ``resume``).
        log: called with one line of progress text at a time.

    Returns:
        results.json's content: the metric matrix m[i][j] and its summary (final averages, forgetting),
        memory (architecture and additional bytes), cost and timings; per-task calibration and the F1 each
        product sees at its deployed threshold.

    Per-task thresholds: each task is calibrated on its own held-out normals; ``replay.calibration_anchors``
    of them per task are kept (as int8 latent crops, never replayed, inside the byte budget when there is one)
    to recalibrate every earlier task's threshold after each later update (edgead/cl/calibration.py).
    """
    if out is None:
        raise EdgeadError("run_stream needs an output folder (out)")
    replay = replay or ReplayConfig()
    if not isinstance(replay, ReplayConfig):
        raise TypeError(f"run_stream(stream, detector, train, replay, out): replay is a {type(replay).__name__}, "
                        "expected a ReplayConfig")
    replay.check_detector(det.model)
    out = Path(out)
    config = {"detector": det.to_dict(), "train": {k: v for k, v in train.to_dict().items() if k != "progress"},
              **replay.to_dict(), "tasks": stream.names, "data_root": config_path(stream.root)}
    # Paths are kept absolute and normalised, so `d` and `/abs/path/d/` resume the same run.
    config["device_buffer"], config["device_trunk"] = config_path(replay.device_buffer), config_path(replay.device_trunk)
    config = {k: config[k] for k in ("detector", "train", "strategy", "codec", "budget_bytes", "memory_size",
                                     "policy", "tasks", "data_root", "device_buffer", "device_trunk")}
    if getattr(stream, "max_train", None) is not None:  # only when set, so older runs still resume
        config["max_train"] = stream.max_train
    calibration_anchors = replay.calibration_anchors
    if calibration_anchors != 1:  # only when not the default, so earlier runs' configs still resume
        config["calibration_anchors"] = calibration_anchors
    if replay.latent_crop != "auto":
        config["latent_crop"] = replay.latent_crop
    state_path = out / STATE_NAME
    done = 0
    if resume:
        state = read_state(out)
        diff = config_differences(state["config"], config)
        if diff:
            raise EdgeadError(f"cannot resume {out}: configuration differs from the saved run in {diff}")
        done = state["completed_tasks"]
    else:
        check_new_run_folder(out, force=force)
    check_writable(out, what="--out")  # before the weights load and the data are read
    check_stream_masks(stream, skip_bad=skip_bad)  # every task's masks, before the first task trains

    pre = Preprocess(image_size=det.image_size, resize_mode=train.resize)
    torch.manual_seed(train.seed)
    model = TeacherStudent(det, weights=weights)
    cost = detector_cost(model)
    anchors = CalibrationAnchors(calibration_anchors, tuple(cost["latent_shape"]), det.image_size, train.seed)
    memory_budget = replay.budget_bytes
    if replay.budget_bytes is not None and replay.keeps_memory:
        reserve = anchors.reserve_bytes(len(stream))
        if replay.budget_bytes <= reserve:
            raise EdgeadError(f"replay budget {replay.budget_bytes:,} B is too small: smaller than one sample plus "
                              f"the calibration anchors it holds ({reserve:,} B: {len(stream)} tasks x "
                              f"{calibration_anchors}); use a larger budget or fewer calibration anchors")
        memory_budget = replay.budget_bytes - reserve
    memory = _make_memory(replay, det, tuple(cost["latent_shape"]), train.seed, len(stream), memory_budget)
    if replay.device_trunk is not None:
        memory.use_device_trunk(replay.device_trunk, tuple(cost["latent_shape"]), det.image_size)
    # Room for every file still to be written (a checkpoint and a memory file per task), before training.
    ckpt, mem = checkpoint_bytes(model), 0 if memory is None else memory.budget_bytes
    check_writable(out, what="--out", largest_file=max(ckpt, mem), total_bytes=(len(stream) - done) * (ckpt + mem))
    rows: list[list[dict]] = []
    timings: list[dict] = []
    fit_cals: list[Calibration] = []  # each task's calibration as fitted right after it
    if done:
        model, pre, meta = load_checkpoint(out / "checkpoints" / f"task_{done - 1:02d}.pt")
        rows, timings = meta["rows"], meta["timings"]
        fit_cals = [Calibration(**c) for c in meta.get("fit_calibrations", [])]
        if memory is not None:
            memory.load(out / "memory" / f"after_task_{done - 1:02d}.{memory.file_suffix}", skip_bad=skip_bad, log=log)
        if calibration_anchors:
            saved = out / "calibration" / f"after_task_{done - 1:02d}.npz"
            if not saved.is_file():
                raise EdgeadError(f"cannot resume {out}: {saved} is missing (a run from before per-task "
                                  f"calibration); start it again in a new --out")
            anchors.load(saved)
        log(f"resuming {out} after task {done}/{len(stream)}")

    cache: dict[int, TaskData] = {}

    def data(i: int) -> TaskData:
        if i not in cache:
            cache[i] = stream.tasks[i].load(pre, val_fraction=train.val_fraction, seed=train.seed, skip_bad=skip_bad)
        return cache[i]

    for task in stream.tasks[done:]:
        i = task.index
        d = data(i)
        train_split, val_split = d.train, d.val
        if replay.strategy == "joint":
            train_split = LoadedSplit.concat([data(k).train for k in range(i + 1)])
            val_split = LoadedSplit.concat([data(k).val for k in range(i + 1)])
        log(f"task {i + 1}/{len(stream)}: {task.name} ({len(train_split)} train, {len(val_split)} val, "
            f"strategy {replay.strategy})")
        source = memory.source() if memory is not None and i > 0 else None
        report = train_task(model, train_split.images, val_split.images, pre, train, replay=source,
                            seed=train.seed * 1000 + i, desc=f"{task.name}")
        fit_cals.append(fit_calibration(model, d.val, pre, train.device, rule=train.threshold_rule, seed=i))
        anchors.add(i, model, d.val.images, pre)
        cals = [fit_cals[j] if j == i else rescale(fit_cals[j], anchors.ratio(model, j)) for j in range(i + 1)]
        model.calibration = task_agnostic(cals)
        model.calibration.extra["per_task"] = {stream.names[j]: asdict(c) for j, c in enumerate(cals)}
        if memory is not None:
            memory.update(i, model, d.train.images, pre)
        t_eval = time.perf_counter()
        row = []
        for j in range(i + 1):
            res = evaluate_split(model, data(j).test, pre, train.device, return_outputs=True)
            oracle = fit_calibration(model, data(j).val, pre, train.device, rule=train.threshold_rule,
                                     seed=j).threshold
            row.append({**res["metrics"], **deployed_row(
                data(j).test.labels, res["scores"], task=cals[j].threshold, agnostic=model.calibration.threshold,
                last_task=fit_cals[i].threshold, fit=fit_cals[j].threshold, oracle=oracle,
                before=fit_cals[i].extra.get("legacy_threshold", float("nan")))})
        report["eval_seconds"] = time.perf_counter() - t_eval
        report.pop("history", None)
        rows.append(row)
        timings.append(report)
        log("  " + "  ".join(f"{stream.names[j]}: img {r['image_auroc']:.3f} pix "
                             + ("n/a" if r["pixel_auroc"] is None else f"{r['pixel_auroc']:.3f}")
                             for j, r in enumerate(row)))
        mem_path = None
        with writing(out, f"the results of task {i + 1} ({task.name})"):
            if memory is not None:
                mem_path = out / "memory" / f"after_task_{i:02d}.{memory.file_suffix}"
                memory.save(mem_path)
            if calibration_anchors:
                anchors.save(out / "calibration" / f"after_task_{i:02d}.npz")
            save_checkpoint(out / "checkpoints" / f"task_{i:02d}.pt", model, pre, task_index=i,
                            tasks=stream.names, rows=rows, timings=timings,
                            fit_calibrations=[asdict(c) for c in fit_cals])
            kept = _joint_kept(data, i) if replay.strategy == "joint" else None
            results = _results(config, stream, cost, memory, rows, timings, command, kept)
            results["memory"]["calibration_bytes"] = anchors.nbytes
            results["memory"]["total_bytes"] = results["memory"]["additional_bytes"] + anchors.nbytes
            results["calibration"] = {
                "method": "anchor-drift" if calibration_anchors else "fit-only",
                "anchors_per_task": calibration_anchors, "anchor_codec": ANCHOR_CODEC,
                "anchor_latent_crop": list(anchors.crop_shape), "bytes": anchors.nbytes,
                "inside_budget": replay.budget_bytes is not None and memory is not None,
                "task_agnostic_rule": AGNOSTIC_RULE,
                "per_task": {stream.names[j]: _json_cal(c) for j, c in enumerate(cals)},
                "task_agnostic": _json_cal(model.calibration, per_task=False),
            }
            results["deployed"] = deployed_summary(rows, stream.names)
            atomic_write_json(out / "results.json", results)
            atomic_write_json(state_path, {"config": config, "completed_tasks": i + 1, "memory_file":
                                           None if mem_path is None else str(mem_path.relative_to(out))})
    return json.loads((out / "results.json").read_text())


def _json_cal(c: Calibration, per_task: bool = True) -> dict:
    d = asdict(c)
    d["extra"] = {k: v for k, v in d["extra"].items() if per_task or k != "per_task"}
    return json.loads(json.dumps(d).replace("NaN", "null"))


def _joint_kept(data, i: int) -> dict[int, tuple[int, int]]:
    """Joint training keeps every seen task's normal training images (train and validation split) as uint8 at
    the training resolution, to train on all of them at the next task: (images, bytes) per task index."""
    return {k: (len(data(k).train) + len(data(k).val), int(data(k).train.images.nbytes + data(k).val.images.nbytes))
            for k in range(i + 1)}


def _results(config, stream, cost, memory, rows, timings, command, joint_kept=None) -> dict:
    memory_entry = {
        "additional_bytes": 0 if memory is None else int(memory.nbytes),
        "buffer_samples": {} if memory is None else
        {(stream.names[t] if t >= 0 else f"device-task{t}"): n for t, n in memory.samples_per_task().items()},
        "buffer_kind": None if memory is None else memory.kind,
    }
    if getattr(memory, "crop_side", 0):  # latents kept as square crops (edgead.cl.crops)
        memory_entry["latent_crop"] = [int(cost["latent_shape"][0]), memory.crop_side, memory.crop_side]
    if joint_kept is not None:
        memory_entry = {"additional_bytes": sum(b for _, b in joint_kept.values()),
                        "buffer_samples": {stream.names[k]: n for k, (n, _) in joint_kept.items()},
                        "buffer_kind": "joint-images-uint8"}
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "config": config,
        "tasks": stream.names,
        "completed_tasks": len(rows),
        "metrics": summarise(rows),
        "memory": {
            "architecture_bytes": cost["architecture_bytes"],
            "params": cost["params"],
            **memory_entry,
        },
        "cost": {k: cost[k] for k in ("macs", "latent_shape", "latent_bytes", "peak_activation_bytes_int8")},
        "timings": {"per_task": timings,
                    "mean_epoch_seconds": float(np.mean([s for t in timings for s in t["epoch_seconds"]]))},
    }
