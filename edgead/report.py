"""`edgead report`: one or more runs -> a Markdown page with figures, a thesis-style table and report.json.

Everything is read from what a run already wrote (results.json, checkpoints); nothing is re-trained or
re-evaluated, so the page shows exactly the numbers the run recorded. The only new computation is the
anomaly maps of the overlay examples, from the run's last checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgead.errors import EdgeadError
from edgead.plotting import pyplot, save_png
from firmware_sim.atomic import atomic_write_json, atomic_write_text

CURVE_METRICS = ("image_auroc", "pixel_auroc")
# Row label -> results.json metric, in the order of the thesis table (docs/thesis.md).
TABLE_METRICS = (("image AUROC", "image_auroc"), ("image F1 (best over thresholds)", "image_f1"),
                 ("pixel AUROC", "pixel_auroc"),
                 ("pixel F1", "pixel_f1"), ("pixel PR-AUC", "pixel_ap"), ("AUPRO", "aupro"))

# Decisions at each product's stored threshold (results.json deployed.decisions.final_average).
DECISION_ROWS = (("image F1 at the deployed threshold", "deployed_f1"),
                 ("deployed balanced accuracy", "balanced_accuracy"), ("false-alarm rate", "false_alarm_rate"),
                 ("defect catch rate", "catch_rate"),
                 ("ceiling: best balanced accuracy over thresholds (evaluation only)", "ceiling"))


def load_run(run_dir: str | Path) -> dict:
    """results.json of a run folder, checked for the keys the report reads."""
    from edgead.cl.results import read_results

    return read_results(run_dir)


def run_label(res: dict) -> str:
    cfg = res["config"]
    det = cfg.get("detector", {})
    return "/".join(str(v) for v in (det.get("model"), det.get("backbone"), cfg.get("strategy"),
                                     cfg.get("codec") or "-"))


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def run_summary(res: dict) -> dict:
    """The numbers behind the table and figures of one run (also what report.json holds)."""
    m, mem = res["metrics"], res["memory"]
    return {
        "tasks": res["tasks"][: res["completed_tasks"]],
        "final_average": {k: m[k]["final_average"] for _, k in TABLE_METRICS if k in m},
        "average_per_step": {k: m[k]["average_per_step"] for k in CURVE_METRICS if k in m},
        "image_auroc_matrix": m.get("image_auroc", {}).get("matrix"),
        "architecture_bytes_fp32": mem["architecture_bytes"]["fp32"],
        "additional_bytes": mem["additional_bytes"],
        "architecture_mb": mem["architecture_bytes"]["fp32"] / 1e6,
        "additional_mb": mem["additional_bytes"] / 1e6,
        "forgetting_relative_pixel_f1": m.get("pixel_f1", {}).get("forgetting_relative"),
        # at each product's own stored threshold (edgead.cl.deployed); the ceiling is evaluation only
        "decisions": ((res.get("deployed") or {}).get("decisions") or {}).get("final_average", {}),
    }


def results_table(labels: list[str], sums: list[dict]) -> str:
    """Markdown table, one column per run, rows as in the thesis table."""
    lines = ["| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, key in TABLE_METRICS:
        lines.append(f"| {name} | " + " | ".join(_fmt(s["final_average"].get(key)) for s in sums) + " |")
    for name, key in DECISION_ROWS:
        if any(s.get("decisions", {}).get(key) is not None for s in sums):
            lines.append(f"| {name} | " + " | ".join(_fmt(s.get("decisions", {}).get(key)) for s in sums) + " |")
    lines.append("| architecture memory MB | " + " | ".join(_fmt(s["architecture_mb"]) for s in sums) + " |")
    lines.append("| additional memory MB | " + " | ".join(_fmt(s["additional_mb"]) for s in sums) + " |")
    lines.append("| average forgetting (relative, pixel F1) | "
                 + " | ".join(_fmt(s["forgetting_relative_pixel_f1"]) for s in sums) + " |")
    return "\n".join(lines)


def plot_curves(labels, sums, tasks, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5.2 * len(CURVE_METRICS), 3.6), squeeze=False)
    x = np.arange(1, len(tasks) + 1)
    for ax, key in zip(axes[0], CURVE_METRICS, strict=True):
        for label, s in zip(labels, sums, strict=True):
            y = [_num(v) for v in s["average_per_step"].get(key, [])]
            ax.plot(x[: len(y)], y, marker="o", label=label)
        ax.set_xticks(x, [f"{i}\n{t}" for i, t in zip(x, tasks, strict=True)], fontsize=8)
        ax.set_xlabel("after task")
        ax.set_ylabel(f"average {key.split('_')[0]} AUROC (tasks seen)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    return save_png(fig, path)


def plot_matrix(label, matrix, tasks, path: Path) -> Path:
    plt = pyplot()
    m = np.array([[_num(v) for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(tasks), 0.9 + 0.8 * len(tasks)))
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis")
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(m)), tasks[: len(m)])
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(f"image AUROC m[i][j]\n{label}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_png(fig, path)


def plot_memory(label, s, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 2.4))
    vals = [s["architecture_mb"], s["additional_mb"]]
    bars = ax.barh(["architecture (fp32)", "additional (replay)"], vals, color=["tab:blue", "tab:orange"])
    ax.bar_label(bars, [f"{v:.3f} MB" for v in vals], padding=3, fontsize=8)
    ax.set_xlim(0, max(vals) * 1.35 or 1.0)
    ax.set_xlabel("MB (10^6 B)")
    ax.set_title(label, fontsize=9)
    return save_png(fig, path)


def _examples(run_dir: Path, res: dict) -> tuple[list[tuple], str | None]:
    """Per task: (name, normal image, its map, defect image, its map, defect mask); or a reason to skip."""
    from edgead.data.stream import TaskStream
    from edgead.engine.checkpoint import load_checkpoint
    from edgead.engine.tensors import predict_images

    cfg = res["config"]
    ckpt = run_dir / "checkpoints" / f"task_{res['completed_tasks'] - 1:02d}.pt"
    root = Path(cfg.get("data_root") or "")
    if not root.is_dir():
        return [], f"data root {root} not found (dataset moved?): overlays skipped"
    if not ckpt.is_file():
        return [], f"{ckpt} not found: overlays skipped"
    train = cfg.get("train", {})
    try:
        model, pre, _ = load_checkpoint(ckpt)
        stream = TaskStream(root, res["tasks"][: res["completed_tasks"]])
        out = []
        for task in stream:
            test = task.load(pre, val_fraction=train.get("val_fraction", 0.1), seed=train.get("seed", 0)).test
            normal = int(np.flatnonzero(test.labels == 0)[0])
            # The defect with the largest mask: the most legible example of what the map should find.
            bad = np.flatnonzero(test.labels == 1)
            defect = int(bad[np.argmax(test.masks[bad].sum(axis=(1, 2)))])
            maps, _ = predict_images(model, test.images[[normal, defect]], pre)
            out.append((task.name, test.images[normal], maps[0], test.images[defect], maps[1], test.masks[defect]))
    except EdgeadError as e:  # a dataset that changed since the run: the rest of the report is still useful
        return [], f"overlays skipped: {e}"
    return out, None


def plot_overlays(label, examples, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(len(examples), 2, figsize=(5.0, 2.5 * len(examples)), squeeze=False)
    for row, (name, img_n, map_n, img_d, map_d, mask) in zip(axes, examples, strict=True):
        # One colour scale per task for both images, so a quiet normal map looks quiet next to the defect.
        vmax = float(max(map_n.max(), map_d.max())) or 1.0
        for ax, img, amap, title in ((row[0], img_n, map_n, f"{name}: normal"), (row[1], img_d, map_d,
                                                                                  f"{name}: defect")):
            ax.imshow(img)
            ax.imshow(amap, cmap="jet", alpha=0.45, vmin=0.0, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        if mask.any():
            row[1].contour(mask, levels=[0.5], colors="white", linewidths=0.8)
    fig.suptitle(f"anomaly maps, last checkpoint\n{label} (white: ground truth)", fontsize=9)
    return save_png(fig, path)


def make_report(run_dirs: list[str | Path], out: str | Path, log=print) -> dict:
    """Write OUT/report.md, OUT/*.png and OUT/report.json; return what report.json holds."""
    if not run_dirs:
        raise EdgeadError("no run folders given")
    run_dirs = [Path(p) for p in run_dirs]
    results = [load_run(p) for p in run_dirs]
    streams = {p: r["tasks"] for p, r in zip(run_dirs, results, strict=True)}
    if len({tuple(t) for t in streams.values()}) > 1:
        detail = "; ".join(f"{p}: {t}" for p, t in streams.items())
        raise EdgeadError(f"runs with different task streams cannot be compared: {detail}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [run_label(r) for r in results]
    # Two runs of the same configuration (e.g. two seeds) would share a column name: add the folder name.
    labels = [f"{lab} ({p.name})" if labels.count(lab) > 1 else lab
              for lab, p in zip(labels, run_dirs, strict=True)]
    sums = [run_summary(r) for r in results]
    tasks = results[0]["tasks"]

    md = ["# edgead report", "", "Runs: " + ", ".join(f"`{p}` ({lab})" for p, lab in
                                                         zip(run_dirs, labels, strict=True)),
          "", f"Tasks, in order: {', '.join(tasks)}.", "", "## Results", "",
          "Final averages over all tasks (the thesis table's layout; MB = 10^6 B).", "",
          results_table(labels, sums), "", "## Average over the tasks seen, after each task", ""]
    plot_curves(labels, sums, tasks, out / "curves.png")
    md += ["![average per step](curves.png)", ""]
    runs_json = []
    for k, (p, res, lab, s) in enumerate(zip(run_dirs, results, labels, sums, strict=True)):
        md += [f"## Run {k + 1}: {lab}", "", f"Folder `{p}`, {res['completed_tasks']}/{len(tasks)} tasks.", ""]
        figures = {}
        if s["image_auroc_matrix"]:
            figures["matrix"] = plot_matrix(lab, s["image_auroc_matrix"], tasks, out / f"run{k + 1}_matrix.png").name
            md += [f"![image AUROC matrix]({figures['matrix']})", ""]
        figures["memory"] = plot_memory(lab, s, out / f"run{k + 1}_memory.png").name
        md += [f"![memory]({figures['memory']})", ""]
        examples, warning = _examples(p, res)
        if warning:
            log(f"warning: {p}: {warning}")
            md += [f"> **Warning:** {warning}", ""]
        else:
            figures["overlays"] = plot_overlays(lab, examples, out / f"run{k + 1}_overlays.png").name
            md += [f"![anomaly maps]({figures['overlays']})", ""]
        runs_json.append({"folder": str(p), "label": lab, **s, "figures": figures, "warning": warning})
    report = {"tasks": tasks, "runs": runs_json}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    return report
