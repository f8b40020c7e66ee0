"""The metrics table that `train`, `eval` and `demo` print."""

from __future__ import annotations

import click


def print_table(res: dict) -> None:
    from edgead.cl.results import METRICS

    m = res["metrics"]
    n_tasks = res.get("completed_tasks", len(res.get("tasks", [])))
    click.echo(f"{'metric':<12} {'final avg':>10} {'forget(rel)':>12} {'forget(abs)':>12}")
    for name in METRICS:
        e = m[name]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        # An average over fewer tasks (image-level tasks have no pixel metrics) says so.
        k = e.get("final_average_tasks", n_tasks)
        over = f"  (over {k} of {n_tasks} tasks)" if e["final_average"] is not None and k < n_tasks else ""
        click.echo(f"{name:<12} {fmt(e['final_average']):>10} {fmt(e['forgetting_relative']):>12} "
                   f"{fmt(e['forgetting_absolute']):>12}{over}")
    mem = res["memory"]
    click.echo(f"architecture {mem['architecture_bytes']['fp32']:,} B fp32; additional memory "
               f"{mem['additional_bytes']:,} B")
