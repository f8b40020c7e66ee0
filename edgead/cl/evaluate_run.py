"""`edgead eval`: a run's checkpoint evaluated again on the test split of every task it has seen.

Writes RUN/eval.json (atomic) and returns the same dict; edgead.cli.tables.format_table prints it like `edgead train` does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edgead.cl.results import METRICS, read_results
from edgead.errors import EdgeadError

EVAL_NAME = "eval.json"


def run_stream_of(res: dict, upto: int, data_root: str | Path | None = None):
    """The task stream a run trained on (MVTec root or dataset file), its first `upto` tasks."""
    from edgead.cl.sources import SourcedStream, run_sources
    from edgead.data.folder import open_stream

    cfg = res["config"]
    if data_root is None:  # each task from where it was read (a run grown by `edgead learn` has several roots)
        return SourcedStream(res["tasks"][:upto], run_sources(res)[:upto])
    return open_stream(data_root, res["tasks"][:upto], cfg.get("max_train"))


def evaluate_run(run_dir: str | Path, task_index: int | None = None, per_defect: bool = False,
                 data_root: str | Path | None = None, write: bool = True) -> dict:
    """Recompute the test metrics of a run's checkpoint on every task seen up to it.

    Args:
        run_dir: the run folder (edgead train --out).
        task_index: the checkpoint after this task (default: the last completed).
        per_defect: also break the metrics down by defect type.
        data_root: the dataset, if it has moved since training.
        write: write RUN/eval.json.

    Returns:
        {"task_index", "checkpoint", "tasks", "metrics": {task: {metric: value}}, "average": {metric: value}}.
    """
    from edgead.engine.checkpoint import load_checkpoint
    from firmware_sim.atomic import atomic_write_json

    run_dir = Path(run_dir)
    res = read_results(run_dir)
    done = res["completed_tasks"]
    i = done - 1 if task_index is None else task_index
    if not 0 <= i < done:
        raise EdgeadError(f"--task {task_index}: this run completed tasks 0..{done - 1}")
    ckpt = run_dir / "checkpoints" / f"task_{i:02d}.pt"
    model, pre, _ = load_checkpoint(ckpt)
    train_cfg = res["config"]["train"]
    out, average = evaluate_tasks(model, pre, run_stream_of(res, i + 1, data_root), train_cfg["val_fraction"],
                                  train_cfg["seed"], per_defect)
    result = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "run": str(run_dir.resolve()),
              "task_index": i, "checkpoint": ckpt.name, "tasks": list(out), "metrics": out, "average": average,
              "decisions": decisions_of(out)}
    if write:
        atomic_write_json(run_dir / EVAL_NAME, result)
    return result


def evaluate_tasks(model, pre, tasks, val_fraction: float, seed: int, per_defect: bool = False,
                   device: str = "cpu") -> tuple[dict[str, dict], dict[str, float | None]]:
    """Test metrics of ``model`` on each task (its test split, the held-out normals left out as in training).

    Returns:
        ({task: {metric: value[, "per_defect": ...]}}, {metric: mean over the tasks that have it, or None}).
    """
    from edgead.engine.evaluate import evaluate_split, per_defect_metrics

    out: dict[str, dict] = {}
    for task in tasks:
        d = task.load(pre, val_fraction=val_fraction, seed=seed)
        r = evaluate_split(model, d.test, pre, device, return_outputs=True)
        out[task.name] = r["metrics"]
        out[task.name]["decisions"] = task_decisions(model, task.name, d.test.labels, r["scores"])
        if per_defect:
            out[task.name]["per_defect"] = per_defect_metrics(d.test, r["maps"], r["scores"])
    average = {}
    for name in METRICS:
        vals = [m[name] for m in out.values() if m.get(name) is not None]
        average[name] = float(np.mean(vals)) if vals else None
    return out, average


def task_decisions(model, name: str, labels: np.ndarray, scores: np.ndarray) -> dict:
    """The decisions at the product's own threshold (the task-agnostic one for a checkpoint without per-task
    thresholds) and the ceiling: edgead.cl.deployed.decision_table's row."""
    from edgead.cl.deployed import decision_table, deployed_row

    cal = model.calibration
    own = cal.per_task.get(name)
    thr, n = (own["threshold"], own.get("n_images")) if own else (cal.threshold, cal.n_images)
    return decision_table([deployed_row(labels, scores, task=thr, n_normals=n)], [name])[name]


def decisions_of(metrics: dict) -> dict:
    """{per_task: {task: decisions}, final_average: {statistic: mean over the tasks}}."""
    per = {t: m["decisions"] for t, m in metrics.items() if "decisions" in m}
    avg = {}
    for k in ("false_alarm_rate", "catch_rate", "balanced_accuracy", "ceiling", "gap", "deployed_f1"):
        vals = [d[k] for d in per.values() if d.get(k) is not None]
        avg[k] = float(np.mean(vals)) if vals else None
    return {"threshold": "each product's own", "per_task": per, "final_average": avg}
