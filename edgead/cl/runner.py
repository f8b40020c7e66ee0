"""Running a strategy over a task stream, with a checkpoint after each task and exact resume.

After task i: the student is trained (current data + replay), calibrated on the task's held-out normals,
the replay memory takes its share of task i, every task seen so far is evaluated, and the checkpoint,
memory file and run state are written atomically. Task i's training depends only on (seed, i) and the
saved state, so `--resume` after a kill ends with the results of an uninterrupted run.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from edgead.cl.memory import ImageMemory, LatentMemory
from edgead.cl.results import SCHEMA, summarise
from edgead.data.loading import LoadedSplit
from edgead.data.stream import TaskData, TaskStream
from edgead.engine.checkpoint import load_checkpoint, save_checkpoint
from edgead.engine.evaluate import evaluate_split, fit_calibration
from edgead.engine.trainer import TrainConfig, train_task
from edgead.errors import EdgeadError
from edgead.models.cost import detector_cost
from edgead.models.teacher_student import DetectorConfig, TeacherStudent
from firmware_sim.atomic import atomic_write_json
from firmware_sim.preprocess import Preprocess

STRATEGIES = ("finetune", "joint", "replay", "compressed-replay")


def validate_strategy(strategy: str, det: DetectorConfig, codec: str | None, *, device_buffer=None,
                      device_trunk=None) -> None:
    if strategy not in STRATEGIES:
        raise EdgeadError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if strategy == "compressed-replay" and det.model != "paste":
        raise EdgeadError("compressed-replay stores the shared trunk's latents and needs --model paste")
    if codec is not None and strategy != "compressed-replay":
        raise EdgeadError(f"--codec {codec} applies only to --strategy compressed-replay (not {strategy})")
    if codec is not None:
        from firmware_sim.codecs import get_codec

        get_codec(codec)  # an unknown codec fails here, before any weights load or training starts
    if codec == "int8-device" and device_buffer is None and device_trunk is None:
        raise EdgeadError("--codec int8-device stores a device trunk's own int8 output: give --device-trunk ART "
                          "(a PaSTe tflite-int8 export) or --device-buffer FILE")
    if device_trunk is not None and codec != "int8-device":
        raise EdgeadError(f"--device-trunk keeps the exported trunk's int8 output: it needs --codec int8-device "
                          f"(not {codec})")


def _make_memory(strategy, det, latent_shape, budget_bytes, memory_size, codec, seed, policy, n_tasks):
    if strategy == "replay":
        return ImageMemory(det.image_size, budget_bytes=budget_bytes, memory_size=memory_size, seed=seed)
    if strategy == "compressed-replay":
        return LatentMemory(codec or "fp32", latent_shape, budget_bytes=budget_bytes, memory_size=memory_size,
                            seed=seed, policy=policy, max_tasks=n_tasks)
    return None


def run_stream(stream: TaskStream, det: DetectorConfig, train: TrainConfig, out: Path, *,
               strategy: str = "finetune", codec: str | None = None, budget_bytes: int | None = None,
               memory_size: int = 100, policy: str = "random", weights: str | None = None,
               resume: bool = False, skip_bad: bool = False, device_buffer: Path | None = None,
               device_trunk: Path | None = None, command: str | None = None, log=print) -> dict:
    validate_strategy(strategy, det, codec, device_buffer=device_buffer, device_trunk=device_trunk)
    out = Path(out)
    config = {"detector": det.to_dict(), "train": {k: v for k, v in train.to_dict().items() if k != "progress"},
              "strategy": strategy, "codec": codec, "budget_bytes": budget_bytes,
              "memory_size": None if budget_bytes is not None else memory_size, "policy": policy,
              "tasks": stream.names, "data_root": str(stream.root),
              "device_buffer": None if device_buffer is None else str(device_buffer),
              "device_trunk": None if device_trunk is None else str(device_trunk)}
    state_path = out / "state.json"
    done = 0
    if resume:
        if not state_path.is_file():
            raise EdgeadError(f"{state_path}: nothing to resume (no completed task in {out})")
        state = json.loads(state_path.read_text())
        if state["config"] != json.loads(json.dumps(config)):
            diff = sorted(k for k in config if json.dumps(config[k]) != json.dumps(state["config"].get(k)))
            raise EdgeadError(f"cannot resume {out}: configuration differs from the saved run in {diff}")
        done = state["completed_tasks"]
    elif state_path.exists():
        raise EdgeadError(f"{out}: already holds a run (pass --resume to continue it, or choose another --out)")

    pre = Preprocess(image_size=det.image_size, resize_mode=train.resize)
    torch.manual_seed(train.seed)
    model = TeacherStudent(det, weights=weights)
    cost = detector_cost(model)
    memory = _make_memory(strategy, det, tuple(cost["latent_shape"]), budget_bytes, memory_size, codec,
                          train.seed, policy, len(stream))
    if device_buffer is not None:
        if not isinstance(memory, LatentMemory):
            raise EdgeadError("--device-buffer needs --strategy compressed-replay")
        memory = LatentMemory.from_file(Path(device_buffer), train.seed, budget_bytes)
    if device_trunk is not None:
        memory.use_device_trunk(Path(device_trunk), tuple(cost["latent_shape"]), det.image_size)
    rows: list[list[dict]] = []
    timings: list[dict] = []
    if done:
        model, pre, meta = load_checkpoint(out / "checkpoints" / f"task_{done - 1:02d}.pt")
        rows, timings = meta["rows"], meta["timings"]
        if memory is not None:
            memory.load(out / "memory" / f"after_task_{done - 1:02d}.{_suffix(memory)}")
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
        if strategy == "joint":
            train_split = LoadedSplit.concat([data(k).train for k in range(i + 1)])
            val_split = LoadedSplit.concat([data(k).val for k in range(i + 1)])
        log(f"task {i + 1}/{len(stream)}: {task.name} ({len(train_split)} train, {len(val_split)} val, "
            f"strategy {strategy})")
        replay = memory.source() if memory is not None and i > 0 else None
        report = train_task(model, train_split.images, val_split.images, pre, train, replay=replay,
                            seed=train.seed * 1000 + i, desc=f"{task.name}")
        model.calibration = fit_calibration(model, val_split, pre, train.device)
        if memory is not None:
            memory.update(i, model, d.train.images, pre)
        t_eval = time.perf_counter()
        row = [evaluate_split(model, data(j).test, pre, train.device) for j in range(i + 1)]
        report["eval_seconds"] = time.perf_counter() - t_eval
        report.pop("history", None)
        rows.append(row)
        timings.append(report)
        log("  " + "  ".join(f"{stream.names[j]}: img {r['image_auroc']:.3f} pix "
                             + ("n/a" if r["pixel_auroc"] is None else f"{r['pixel_auroc']:.3f}")
                             for j, r in enumerate(row)))
        mem_path = None
        if memory is not None:
            mem_path = out / "memory" / f"after_task_{i:02d}.{_suffix(memory)}"
            memory.save(mem_path)
        save_checkpoint(out / "checkpoints" / f"task_{i:02d}.pt", model, pre, task_index=i, tasks=stream.names,
                        rows=rows, timings=timings)
        results = _results(config, stream, cost, memory, rows, timings, command)
        atomic_write_json(out / "results.json", results)
        atomic_write_json(state_path, {"config": config, "completed_tasks": i + 1, "memory_file":
                                       None if mem_path is None else str(mem_path.relative_to(out))})
    return json.loads((out / "results.json").read_text())


def _suffix(memory) -> str:
    return "edgeadrb" if isinstance(memory, LatentMemory) else "npz"


def _results(config, stream, cost, memory, rows, timings, command) -> dict:
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
            "additional_bytes": 0 if memory is None else int(memory.nbytes),
            "buffer_samples": {} if memory is None else
            {(stream.names[t] if t >= 0 else f"device-task{t}"): n for t, n in memory.samples_per_task().items()},
            "buffer_kind": None if memory is None else memory.kind,
        },
        "cost": {k: cost[k] for k in ("macs", "latent_shape", "latent_bytes", "peak_activation_bytes_int8")},
        "timings": {"per_task": timings,
                    "mean_epoch_seconds": float(np.mean([s for t in timings for s in t["epoch_seconds"]]))},
    }
