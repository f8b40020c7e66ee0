"""results.json: the metric matrix m[i][j], averages, forgetting, memory and timings of a run.

Stable keys (documented in the README):
  schema, created, command, config, tasks,
  metrics.<name>.matrix            m[i][j] = metric on task j after training task i (null above the diagonal)
  metrics.<name>.final_average     mean of the last row over the tasks that have the metric (pixel metrics
                                   of an image-level task, e.g. ELPV, are null, never 0, and stay out)
  metrics.<name>.final_average_tasks  how many tasks that mean covers
  metrics.<name>.average_per_step  mean of row i over tasks 0..i
  metrics.<name>.forgetting_relative / forgetting_absolute
  memory.architecture_bytes        {fp32, int8} of all parameters (teacher, student, shared counted once)
  memory.additional_bytes          bytes the replay memory really occupies after the last task
  memory.buffer_samples            samples kept per task after the last task
  timings.per_task[i]              {train_seconds, prepare_seconds, epoch_seconds[], selected_epoch, eval_seconds}
  memory.calibration_bytes / memory.total_bytes   calibration anchors; replay memory + anchors
  calibration.per_task.<task> / calibration.task_agnostic   thresholds and score statistics (edgead.cl.calibration)
  deployed.per_task.<task>.<kind>, deployed.final_average, deployed.matrix   F1 at stored thresholds (edgead.cl.deployed)
  memory.per_task.<task>           {samples, bytes, crop, share_of_budget} after the last task
  memory.after_task[i].<task>      the same after each task i (the budget is re-shared as products arrive)
  versions[v]                      each `edgead train` / `edgead learn` call: its tasks, command and what changed
  task_data[j]                     where task j's images are read ({data, max_train, task}; data null: a device's)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgead.errors import EdgeadError
from edgead.metrics.forgetting import forgetting_per_task

METRICS = ("image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_ap", "aupro")
SCHEMA = "edgead-results/1"


def _clean(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def summarise(rows: list[list[dict]]) -> dict:
    """rows[i][j] = metrics dict on task j after task i (j <= i)."""
    t = len(rows)
    out = {}
    for name in METRICS:
        m = np.full((t, t), np.nan)
        for i, row in enumerate(rows):
            for j, metrics in enumerate(row):
                if metrics.get(name) is not None:
                    m[i, j] = metrics[name]
        last = m[t - 1, :t]
        entry = {
            "matrix": [[_clean(float(m[i, j])) if j <= i else None for j in range(t)] for i in range(t)],
            "final_average": _clean(float(np.nanmean(last))) if np.isfinite(last).any() else None,
            "final_average_tasks": int(np.isfinite(last).sum()),
            "average_per_step": [_clean(float(np.nanmean(m[i, : i + 1]))) if np.isfinite(m[i, : i + 1]).any()
                                 else None for i in range(t)],
        }
        # Forgetting of each earlier task j reads only its own column, so tasks without this metric (image-level
        # tasks have no pixel metrics) are left out of the average instead of voiding it.
        known = [j for j in range(t - 1) if np.isfinite(m[j:t, j]).all()]
        entry["forgetting_tasks"] = len(known)
        for mode in ("relative", "absolute"):
            if t == 1:
                value = 0.0 if np.isfinite(m[0, 0]) else None
            elif known:
                value = float(forgetting_per_task(np.where(np.isnan(m), 0, m), mode)[known].mean())
            else:
                value = None
            entry[f"forgetting_{mode}"] = value
        out[name] = entry
    return out


def read_results(run_dir: str | Path) -> dict:
    """A run folder's results.json, checked for the keys every reader (eval, export, report) relies on."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise EdgeadError(f"{run_dir}: run folder not found")
    if not path.is_file():
        raise EdgeadError(f"{run_dir}: no results.json (not an edgead run folder, or no task completed yet)")
    try:
        res = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeadError(f"{path}: not readable JSON ({e})") from None
    missing = [k for k in ("config", "tasks", "completed_tasks", "metrics", "memory")
               if not isinstance(res, dict) or k not in res]
    if missing:
        raise EdgeadError(f"{path}: not an edgead results file (missing {missing})")
    return res


def _json_cal(c, per_task: bool = True) -> dict:
    d = {k: v for k, v in asdict(c).items() if k != "per_task"}
    return json.loads(json.dumps(d).replace("NaN", "null"))


def joint_kept(learner) -> dict[str, tuple[int, int]]:
    """Joint training keeps every seen task's normal training images (train and validation split) as uint8 at
    the training resolution, to train on all of them at the next task: (images, bytes) per task name."""
    out = {}
    for k, name in enumerate(learner.names):
        d = learner.data(k)
        out[name] = (len(d.train) + len(d.val), int(d.train.images.nbytes + d.val.images.nbytes))
    return out


def _memory_entry(learner) -> dict:
    memory, cost = learner.memory, learner.cost
    if learner.replay.strategy == "joint":
        kept = joint_kept(learner)
        return {"additional_bytes": sum(b for _, b in kept.values()),
                "buffer_samples": {n: k for n, (k, _) in kept.items()}, "buffer_kind": "joint-images-uint8"}
    entry = {"additional_bytes": 0 if memory is None else int(memory.nbytes),
             "buffer_samples": {} if memory is None else {n: h["samples"] for n, h in
                                                           learner.memory_holdings().items()},
             "buffer_kind": None if memory is None else memory.kind}
    if getattr(memory, "crop_side", 0):  # latents kept as square crops (edgead.cl.crops)
        entry["latent_crop"] = [int(cost["latent_shape"][0]), memory.crop_side, memory.crop_side]
    if memory is not None:
        entry["budget_bytes"] = int(memory.budget_bytes)
        entry["per_task"] = learner.memory_holdings()
        entry["after_task"] = learner.holdings
    return entry


def _calibration_entry(learner) -> dict:
    from edgead.cl.calibration import AGNOSTIC_RULE, ANCHOR_CODEC

    anchors, replay = learner.anchors, learner.replay
    method = "anchor-drift" if replay.calibration_anchors else "fit-only"
    if learner.calset is not None:
        method = "refit"
    return {"method": method,
            "anchors_per_task": replay.calibration_anchors, "anchor_codec": ANCHOR_CODEC,
            "anchor_latent_crop": list(anchors.crop_shape), "bytes": anchors.nbytes,
            "inside_budget": replay.budget_bytes is not None and learner.memory is not None,
            "task_agnostic_rule": AGNOSTIC_RULE,
            "per_task": {learner.names[j]: _json_cal(c) for j, c in enumerate(learner.cals)},
            "task_agnostic": _json_cal(learner.model.calibration, per_task=False)}


def build_results(learner, config: dict, *, command: str, versions: list[dict], task_data: list[dict]) -> dict:
    """results.json's content after the learner's last step (see the module docstring for the keys)."""
    import platform
    from datetime import UTC, datetime

    import torch

    from edgead.cl.deployed import deployed_summary

    cost, timings = learner.cost, learner.timings
    memory = {"architecture_bytes": cost["architecture_bytes"], "params": cost["params"], **_memory_entry(learner)}
    # the refit set is host memory outside the replay budget: counted here, never in the budget
    set_bytes = learner.calset.nbytes if learner.calset is not None else 0
    memory["calibration_bytes"] = learner.anchors.nbytes + set_bytes
    memory["calibration_set_bytes"] = set_bytes
    memory["total_bytes"] = memory["additional_bytes"] + memory["calibration_bytes"]
    return {
        "schema": SCHEMA, "created": datetime.now(UTC).isoformat(timespec="seconds"), "command": command,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "config": config, "tasks": list(learner.names), "completed_tasks": len(learner.rows),
        "metrics": summarise(learner.rows), "memory": memory,
        "cost": {k: cost[k] for k in ("macs", "latent_shape", "latent_bytes", "peak_activation_bytes_int8")},
        "timings": {"per_task": timings,
                    "mean_epoch_seconds": float(np.mean([s for t in timings for s in t["epoch_seconds"]] or [0.0]))},
        "calibration": _calibration_entry(learner),
        "deployed": deployed_summary(learner.rows, learner.names),
        "versions": versions, "task_data": task_data,
    }
