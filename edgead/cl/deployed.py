"""Deployed F1: what a factory sees when images above a stored threshold are called anomalous.

Each evaluation of task j after task i records the F1 at five thresholds, from the same scores:

* ``task``      task j's own threshold, recalibrated after every later update (``device run --task NAME``)
* ``agnostic``  the task-agnostic threshold (``device run`` without ``--task``)
* ``last_task`` the last trained task's threshold, as fitted: the single threshold exported before per-task
                calibration (the "before" of this change)
* ``fit``       task j's own threshold as fitted right after task j, never updated (per task, no recalibration)
* ``oracle``    the threshold rule applied to task j's full held-out normals under the current model: evaluation
                only (a device keeps no images), the reference the recalibration is measured against
* ``before``    what was exported before per-task calibration and the threshold rule were chosen: the last
                trained task's threshold by the legacy rule (edgead.engine.thresholds.LEGACY_THRESHOLD_RULE),
                from the same scores as its own
"""

from __future__ import annotations

import math

import numpy as np

from edgead.engine.thresholds import deployed_balanced_accuracy, deployed_f1

THRESHOLDS = ("task", "agnostic", "last_task", "fit", "oracle", "before")


def deployed_row(labels: np.ndarray, scores: np.ndarray, **thresholds: float) -> dict:
    """{deployed_f1_<kind>: F1, deployed_bacc_<kind>: balanced accuracy, threshold_<kind>: threshold} for each
    threshold kind given (keys of THRESHOLDS)."""
    out = {f"deployed_f1_{k}": deployed_f1(labels, scores, thresholds[k]) for k in THRESHOLDS if k in thresholds}
    out.update({f"deployed_bacc_{k}": deployed_balanced_accuracy(labels, scores, thresholds[k])
                for k in THRESHOLDS if k in thresholds})
    out.update({f"threshold_{k}": float(thresholds[k]) if math.isfinite(thresholds[k]) else None
                for k in THRESHOLDS if k in thresholds})
    return out


def _rel_error(row: dict, kind: str) -> float | None:
    a, ref = row.get(f"threshold_{kind}"), row.get("threshold_oracle")
    return abs(a - ref) / ref if a is not None and ref else None


def deployed_summary(rows: list[list[dict]], names: list[str]) -> dict:
    """results.json ``deployed``: per task after the last completed task, their averages, and m[i][j] matrices."""
    last = rows[-1]

    def per(metric: str) -> dict:
        return {names[j]: {k: last[j].get(f"{metric}_{k}") for k in THRESHOLDS} for j in range(len(last))}

    def average(table: dict) -> dict:
        out = {}
        for k in THRESHOLDS:
            vals = [v[k] for v in table.values() if v[k] is not None and math.isfinite(v[k])]
            out[k] = float(np.mean(vals)) if vals else None
        return out

    per_task, bacc_per_task = per("deployed_f1"), per("deployed_bacc")
    avg = average(per_task)
    # How well recalibration tracks the final model: relative distance of the deployed threshold to the
    # oracle's, for the tasks before the last (the last one was just fitted), recalibrated vs as fitted.
    err = {}
    for k in ("task", "fit"):
        vals = [e for e in (_rel_error(r, k) for r in last[:-1]) if e is not None]
        err[k] = float(np.mean(vals)) if vals else None
    return {
        "threshold_per_task": {names[j]: {k: last[j].get(f"threshold_{k}") for k in THRESHOLDS}
                               for j in range(len(last))},
        "threshold_error_vs_oracle": {**err, "definition": "mean over the tasks before the last of "
                                      "|threshold - oracle| / oracle: 'task' recalibrated, 'fit' as fitted"},
        "metric": "image F1 of the anomalous class at a stored threshold (not the best over thresholds)",
        "thresholds": {"task": "the task's own threshold, recalibrated after every update (--task NAME)",
                       "agnostic": "the task-agnostic threshold (no --task)",
                       "last_task": "the last task's threshold as fitted (one threshold, before per-task)",
                       "fit": "the task's own threshold as fitted after it, never recalibrated",
                       "oracle": "the threshold rule on the task's held-out normals under the final model "
                                 "(evaluation only)",
                       "before": "the last task's threshold by the legacy rule (what was exported before)"},
        "per_task": per_task,
        "final_average": avg,
        "balanced_accuracy": {"metric": "mean of the defect catch rate and the good-part pass rate at the stored "
                              "threshold: independent of the test set's defect share, unlike F1",
                              "per_task": bacc_per_task, "final_average": average(bacc_per_task)},
        "matrix": {k: [[r.get(f"deployed_f1_{k}") for r in row] for row in rows] for k in THRESHOLDS},
    }
