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
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from edgead.errors import EdgeadError
from edgead.metrics import forgetting

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
        finite = np.isfinite(np.tril(m) + np.triu(np.zeros_like(m), 1)).all() if t else False
        for mode in ("relative", "absolute"):
            entry[f"forgetting_{mode}"] = float(forgetting(np.where(np.isnan(m), 0, m), mode)) if finite else None
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
