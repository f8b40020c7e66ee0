"""`edgead eval`: recompute a run's test metrics from its checkpoints; a table and RUN/eval.json."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path))
@click.option("--task", "task_index", type=int, default=None, help="Checkpoint after this task (default: last).")
@click.option("--per-defect", is_flag=True, help="Also break the metrics down by defect type.")
@click.option("--data", "data_root", default=None, type=click.Path(path_type=Path),
              help="Dataset root or dataset file, if it has moved since training.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON of RUN/eval.json instead of the table.")
def eval_cmd(run_dir: Path, task_index: int | None, per_defect: bool, data_root: Path | None, as_json: bool):
    """Recompute the test metrics of a run's checkpoint on every task it has seen; writes RUN/eval.json."""
    from edgead.cl.evaluate_run import EVAL_NAME, evaluate_run
    from edgead.cli.tables import format_decisions, format_table

    res = evaluate_run(run_dir, task_index, per_defect, data_root)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"checkpoint after task {res['task_index']} ({res['checkpoint']}), test split of each task:")
    click.echo(format_table(res))
    click.echo(format_decisions(res))
    click.echo(f"wrote {run_dir / EVAL_NAME}")
