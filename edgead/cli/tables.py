"""The metrics table that `train`, `eval` and `demo` print."""

from __future__ import annotations

import click

# image_f1 is the best F1 over all thresholds on the test set (evaluation only): named so in the table.
LABELS = {"image_f1": "image_f1_best"}
DECISION_COLUMNS = (("threshold", "threshold", "{:.4g}"), ("normals", "n_normals", "{}"),
                    ("false alarms", "false_alarm_rate", "{:.3f}"), ("caught", "catch_rate", "{:.3f}"),
                    ("bal.acc", "balanced_accuracy", "{:.3f}"), ("ceiling", "ceiling", "{:.3f}"),
                    ("F1", "deployed_f1", "{:.3f}"))


def print_table(res: dict) -> None:
    from edgead.cl.results import METRICS

    m = res["metrics"]
    n_tasks = res.get("completed_tasks", len(res.get("tasks", [])))
    multi = n_tasks > 1  # forgetting needs a later task: no columns of n/a for a single task
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    click.echo(f"{'metric':<14} {'final avg' if multi else 'test':>10}"
               + (f" {'forget(rel)':>12} {'forget(abs)':>12}" if multi else ""))
    for name in METRICS:
        e = m[name]
        # An average over fewer tasks (image-level tasks have no pixel metrics) says so.
        k = e.get("final_average_tasks", n_tasks)
        over = f"  (over {k} of {n_tasks} tasks)" if e["final_average"] is not None and k < n_tasks else ""
        forget = f" {fmt(e['forgetting_relative']):>12} {fmt(e['forgetting_absolute']):>12}" if multi else ""
        click.echo(f"{LABELS.get(name, name):<14} {fmt(e['final_average']):>10}{forget}{over}")
    decisions = (res.get("deployed") or {}).get("decisions")
    if decisions:
        click.echo(decision_table(decisions["per_task"], decisions.get("final_average")))
    mem = res["memory"]
    click.echo(f"architecture {mem['architecture_bytes']['fp32']:,} B fp32; replay memory "
               f"{mem['additional_bytes']:,} B" + (f" of a {mem['budget_bytes']:,} B budget" if mem.get("budget_bytes")
                                                  else ""))
    if mem.get("per_task"):
        click.echo(memory_table(mem["per_task"]))


def memory_table(per_task: dict) -> str:
    """What the replay memory holds per product: samples, bytes, the latent crop kept and the budget's share."""
    width = max([len("task"), *(len(t) for t in per_task)]) + 2
    lines = [f"{'task':<{width}}{'samples':>10}{'bytes':>12}{'crop (C,H,W)':>16}{'of budget':>12}"]
    for task, h in per_task.items():
        crop = "whole" if not h.get("crop") else "x".join(map(str, h["crop"]))
        lines.append(f"{task:<{width}}{h['samples']:>10,}{h['bytes']:>12,}{crop:>16}{h['share_of_budget']:>12.1%}")
    return "\n".join(lines)


def decision_table(per_task: dict, average: dict | None = None) -> str:
    """Each product's decisions at its own threshold (edgead.cl.deployed.decision_table) and the ceiling, the best
    balanced accuracy over all thresholds on its test set (evaluation only); warnings for thresholds set from
    few held-out normals."""
    width = max([len("average"), *(len(t) for t in per_task)]) + 2

    def cell(v, f: str) -> str:
        return "n/a" if v is None else f.format(v)

    lines = ["decisions at each product's own threshold (F1 at it; ceiling: the best balanced accuracy over all "
             "thresholds on the test set, evaluation only):",
             f"{'task':<{width}}" + "".join(f"{h:>14}" for h, _, _ in DECISION_COLUMNS)]
    for task, row in per_task.items():
        lines.append(f"{task:<{width}}" + "".join(f"{cell(row.get(k), f):>14}" for _, k, f in DECISION_COLUMNS))
    if average:
        lines.append(f"{'average':<{width}}" + "".join(f"{cell(average.get(k), f) if k in average else '':>14}"
                                                       for _, k, f in DECISION_COLUMNS))
    lines += [f"warning: {row['warning']}" for row in per_task.values() if row.get("warning")]
    return "\n".join(lines)


def format_decisions(result: dict) -> str:
    """The decisions table of an evaluation (edgead.cl.evaluate_run)."""
    from edgead.cl.evaluate_run import decisions_of

    d = result.get("decisions") or decisions_of(result["metrics"])
    return decision_table(d["per_task"], d["final_average"])


def format_table(result: dict) -> str:
    """The metrics per task and their average, one row each (as `edgead train` prints its summary)."""
    from edgead.cl.results import METRICS

    width = max([len("average"), *(len(t) for t in result["metrics"])]) + 2
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{'task':<{width}}" + "".join(f"{LABELS.get(m, m):>14}" for m in METRICS)]
    for task, m in result["metrics"].items():
        lines.append(f"{task:<{width}}" + "".join(f"{fmt(m.get(k)):>14}" for k in METRICS))
    lines.append(f"{'average':<{width}}" + "".join(f"{fmt(result['average'][k]):>14}" for k in METRICS))
    return "\n".join(lines)
