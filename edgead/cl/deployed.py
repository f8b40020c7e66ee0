"""Deployed F1: what a factory sees when images above a stored threshold are called anomalous.

Each evaluation of task j after task i records the F1 at five thresholds, from the same scores:

* ``task``      task j's own threshold, recalibrated after every later update (``device run --task NAME``)
* ``agnostic``  the task-agnostic threshold (``device run`` without ``--task``)
* ``last_task`` the last trained task's threshold, as fitted: the single threshold exported before per-task
                calibration (the "before" of this change)
* ``fit``       task j's own threshold as fitted right after task j, never updated (per task, no recalibration)
* ``anchors``   task j's fitted threshold scaled by its anchors' drift (the default recalibration), recorded
                beside ``task`` when the run refits instead (``--recalibrate refit``): both from one training
* ``oracle``    the threshold rule applied to task j's full held-out normals under the current model: evaluation
                only (a device keeps no images), the reference the recalibration is measured against
* ``before``    what was exported before per-task calibration and the threshold rule were chosen: the last
                trained task's threshold by the legacy rule (edgead.engine.thresholds.LEGACY_THRESHOLD_RULE),
                from the same scores as its own

The learner passes only ``task`` (the threshold a device uses) and ``n_normals`` (how many held-out normals
set it); benchmarks add the other kinds. Beside the deployed numbers each row records the **ceiling**: the best
balanced accuracy over all thresholds on that test set (evaluation only: it uses the test labels), so the
gap a better threshold could still close is visible wherever decisions are reported.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from edgead.engine.thresholds import FEW_NORMALS, ThresholdWarning, deployed_balanced_accuracy, deployed_f1
from firmware_sim.decisions import ceiling

THRESHOLDS = ("task", "agnostic", "last_task", "fit", "anchors", "oracle", "before")


def deployed_row(labels: np.ndarray, scores: np.ndarray, n_normals: int | None = None, **thresholds: float) -> dict:
    """Per threshold kind given (keys of THRESHOLDS): deployed_f1_<kind>, deployed_bacc_<kind> (balanced
    accuracy), deployed_fpr_<kind> (false-alarm rate on the good test images), deployed_tpr_<kind> (defect catch
    rate) and threshold_<kind>; once per row: ceiling_bacc and ceiling_threshold (the best balanced accuracy over
    all thresholds on these labels, evaluation only) and n_normals (the held-out normals behind the ``task``
    threshold, when given)."""
    unknown = sorted(set(thresholds) - set(THRESHOLDS))
    if unknown:
        raise ValueError(f"deployed_row: unknown threshold kinds {unknown} (expected some of {THRESHOLDS})")
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    good, bad = labels == 0, labels == 1
    out: dict = {}
    for k in (k for k in THRESHOLDS if k in thresholds):
        t = float(thresholds[k])
        ok = math.isfinite(t)
        out[f"deployed_f1_{k}"] = deployed_f1(labels, scores, t)
        out[f"deployed_bacc_{k}"] = deployed_balanced_accuracy(labels, scores, t)
        out[f"deployed_fpr_{k}"] = float((scores[good] > t).mean()) if ok and good.any() else None
        out[f"deployed_tpr_{k}"] = float((scores[bad] > t).mean()) if ok and bad.any() else None
        out[f"threshold_{k}"] = t if ok else None
    c = ceiling(labels, scores)
    out["ceiling_bacc"], out["ceiling_threshold"] = c["ceiling"], c["ceiling_threshold"]
    if n_normals is not None:
        out["n_normals"] = int(n_normals)
    return out


def few_normals_warning(n_normals: int | None, task: str) -> str | None:
    """The warning for a threshold set from fewer than FEW_NORMALS held-out normals (None otherwise)."""
    if n_normals is None or n_normals >= FEW_NORMALS:
        return None
    return (f"{task}: its threshold comes from {n_normals} held-out normal image(s) (fewer than {FEW_NORMALS}): "
            "its false-alarm rate on new good parts is uncertain; hold out more normals (--val-fraction) or set "
            "it from a few labelled parts (edgead calibrate)")


def decision_table(rows: list[dict], names: list[str], kind: str = "task") -> dict:
    """Per task, at threshold ``kind``: threshold, n_normals, false_alarm_rate, catch_rate, balanced_accuracy,
    ceiling (evaluation only), gap (ceiling - balanced accuracy), F1 at the threshold and a warning when few
    normals set it. ``rows``: one evaluation row per task (deployed_row's keys)."""
    out = {}
    for name, r in zip(names, rows, strict=True):
        bacc, ceil = r.get(f"deployed_bacc_{kind}"), r.get("ceiling_bacc")
        out[name] = {"threshold": r.get(f"threshold_{kind}"), "n_normals": r.get("n_normals"),
                     "false_alarm_rate": r.get(f"deployed_fpr_{kind}"), "catch_rate": r.get(f"deployed_tpr_{kind}"),
                     "balanced_accuracy": bacc, "ceiling": ceil,
                     "gap": None if bacc is None or ceil is None else ceil - bacc,
                     "deployed_f1": r.get(f"deployed_f1_{kind}"),
                     "warning": few_normals_warning(r.get("n_normals"), name)}
    return out


def warn_few_normals(table: dict) -> None:
    """One ThresholdWarning per task of a decision_table whose threshold rests on few held-out normals."""
    for row in table.values():
        if row.get("warning"):
            warnings.warn(row["warning"], ThresholdWarning, stacklevel=2)


def _rel_error(row: dict, kind: str) -> float | None:
    a, ref = row.get(f"threshold_{kind}"), row.get("threshold_oracle")
    return abs(a - ref) / ref if a is not None and ref else None


def deployed_summary(rows: list[list[dict]], names: list[str]) -> dict:
    """results.json ``deployed``: per task after the last completed task, their averages, and m[i][j] matrices."""
    last = rows[-1]

    def per(metric: str) -> dict:
        return {names[j]: {k: last[j].get(f"{metric}_{k}") for k in THRESHOLDS} for j in range(len(last))}

    def mean_of(values) -> float | None:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(vals)) if vals else None

    def average(table: dict) -> dict:
        out = {}
        for k in THRESHOLDS:
            vals = [v[k] for v in table.values() if v[k] is not None and math.isfinite(v[k])]
            out[k] = float(np.mean(vals)) if vals else None
        return out

    per_task, bacc_per_task = per("deployed_f1"), per("deployed_bacc")
    for j, name in enumerate(names[:len(last)]):
        bacc_per_task[name]["ceiling"] = last[j].get("ceiling_bacc")
    bacc_average = {**average(bacc_per_task), "ceiling": mean_of(v["ceiling"] for v in bacc_per_task.values())}
    decisions = decision_table(last, names[:len(last)])
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
                              "ceiling": "the best balanced accuracy over all thresholds on the task's test set "
                                         "(evaluation only: it uses the test labels)",
                              "per_task": bacc_per_task, "final_average": bacc_average},
        "decisions": {"threshold": "task (the product's own, what `device run --task NAME` uses)",
                      "per_task": decisions,
                      "final_average": {k: mean_of(v[k] for v in decisions.values())
                                        for k in ("false_alarm_rate", "catch_rate", "balanced_accuracy", "ceiling",
                                                  "gap", "deployed_f1")}},
        "matrix": {k: [[r.get(f"deployed_f1_{k}") for r in row] for row in rows] for k in THRESHOLDS},
    }
