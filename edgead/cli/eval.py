"""`edgead eval`: recompute a run's test metrics from its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgead.errors import EdgeadError


@click.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path))
@click.option("--task", "task_index", type=int, default=None, help="Checkpoint after this task (default: last).")
@click.option("--per-defect", is_flag=True, help="Also break the metrics down by defect type.")
def eval_cmd(run_dir: Path, task_index: int | None, per_defect: bool):
    """Recompute the test metrics of a run's checkpoint on every task it has seen."""
    from edgead.cl.results import read_results
    from edgead.data import TaskStream
    from edgead.engine.checkpoint import load_checkpoint
    from edgead.engine.evaluate import evaluate_split, per_defect_metrics

    res = read_results(run_dir)
    i = res["completed_tasks"] - 1 if task_index is None else task_index
    if not 0 <= i < res["completed_tasks"]:
        raise EdgeadError(f"--task {task_index}: this run completed tasks 0..{res['completed_tasks'] - 1}")
    model, pre, _ = load_checkpoint(run_dir / "checkpoints" / f"task_{i:02d}.pt")
    stream = TaskStream(res["config"]["data_root"], res["tasks"])
    out = {}
    for task in stream.tasks[: i + 1]:
        d = task.load(pre, val_fraction=res["config"]["train"]["val_fraction"], seed=res["config"]["train"]["seed"])
        r = evaluate_split(model, d.test, pre, return_outputs=True)
        out[task.name] = r["metrics"]
        if per_defect:
            out[task.name]["per_defect"] = per_defect_metrics(d.test, r["maps"], r["scores"])
    click.echo(json.dumps({"task_index": i, "metrics": out}, indent=2))
