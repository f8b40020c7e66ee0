"""Real product stream: fine-tuning, joint training, image replay and compressed replay over real categories.

    python -m edgead data convert ...   # each real category into one folder (see edgead/data), e.g. /tmp/real
    python benchmarks/bench_real_stream.py --data /tmp/real --seeds 0,1,2 --jobs 2           # the full sweep
    python benchmarks/bench_real_stream.py --data /tmp/real --ray auto --seeds 0,1,2         # on a Ray cluster
    python benchmarks/bench_real_stream.py --quick                                           # synthetic, 64 px

The stream, in this fixed order (REAL_ORDER): magnetic_tile, battery_weld, bsdata, mpdd_metal_plate, elpv_mono,
elpv_poly. The four pixel-labelled products come first, so pixel AUROC and AUPRO forgetting are measured over
four tasks; the two ELPV cell types (image-level labels: they contribute image metrics only) come last, mono
before poly, so the last update is a product close to the one before it. `--tasks` picks another order or a
subset; a category named twice is refused.

Methods: finetune (no memory), joint (all data so far: the upper bound), replay (uint8 images), and compressed
replay with the codecs fp32, int8-channel, int4-channel, pca and int8-device (the latents the exported
tflite-int8 trunk outputs, collected as a device keeps them). Each replay method runs at every byte budget
(50 kB ... 2.46 MB) and at the thesis's sample count (`--memory-size`, 100). Budgets hold the calibration anchors
too (edgead.cl.calibration); x axes are the bytes really kept (replay memory + anchors). A budget below one
sample is reported as infeasible. PaSTe-MCUNet, ImageNet teacher.

Every (method, setting, seed) is one independent run of an `edgead.sweep` sweep: `--jobs N` local processes,
`--ray ADDRESS|auto|local`, rerunning skips the runs already finished (their results stay in the sweep folder,
`--sweep-dir`, default OUT_DIR/real_stream[_TAG]_runs), `--resume` reuses another sweep's folder.

Writes OUT_DIR/real_stream[_TAG].json (args, runs, mean and std over seeds, checks) and .csv, the Pareto plot
real_stream[_TAG]_pareto.png (final image AUROC and forgetting against bytes) and the m[i][j] image-AUROC
heatmaps of the main methods real_stream[_TAG]_matrix_<method>.png. Also reported per run and method: the
deployed F1 at the stored thresholds (per task, task-agnostic, and the single last-task threshold of before).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchkit import RESULTS, check, header, print_table, run_as_script, write_csv, write_json
from edgead.engine.thresholds import LEGACY_THRESHOLD_RULE
from edgead.errors import EdgeadError
from firmware_sim.errors import UserError
from firmware_sim.sizes import format_size, parse_size

REAL_ORDER = ("magnetic_tile", "battery_weld", "bsdata", "mpdd_metal_plate", "elpv_mono", "elpv_poly")
CODECS = ("fp32", "int8-channel", "int4-channel", "pca", "int8-device")
METHODS = ("finetune", "joint", "replay", *CODECS)
BUDGETS = "50kB,100kB,150kB,300kB,1MB,2.46MB"
MAIN = ("finetune", "joint", "replay", "int8-channel")  # the methods whose m[i][j] heatmaps are drawn
KEYS = ("image_auroc", "pixel_auroc", "aupro", "img_forget_abs", "pix_forget_abs", "aupro_forget_abs",
        "deployed_f1_task", "deployed_f1_agnostic", "deployed_f1_last_task", "deployed_f1_fit",
        "deployed_f1_oracle", "deployed_f1_before", "deployed_bacc_task", "deployed_bacc_agnostic",
        "deployed_bacc_last_task", "deployed_bacc_fit", "deployed_bacc_anchors", "deployed_bacc_oracle",
        "deployed_bacc_before",
        "deployed_bacc_ceiling", "deployed_fpr_task", "deployed_tpr_task", "threshold_error_task", "threshold_error_fit", "additional_bytes", "calibration_bytes", "total_bytes", "buffer_samples", "wall_s")


def parse_tasks(text: str) -> list[str]:
    """Comma list of categories; a category named twice is an error (one product is one task)."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    dup = sorted({t for t in tasks if tasks.count(t) > 1})
    if dup:
        raise SystemExit(f"error: --tasks names {', '.join(dup)} twice: each product is one task of the stream")
    if not tasks:
        raise SystemExit("error: --tasks needs at least one category")
    return tasks


class ResearchThresholds:
    """Evaluation plugin of the learner (edgead.cl.learner): the deployed numbers at thresholds a device never
    gets, for the threshold study (kinds of edgead.cl.deployed beside ``task``, which the loop records itself):
    the task-agnostic and last task's thresholds, each task's as fitted and as its anchors scale it, the oracle
    (the rule on the task's held-out normals under the current model) and the legacy rule's (before).
    ``final`` keeps, per task, the scores of its last evaluation and the calibration it was judged at, for the
    few-labelled-parts study on the stream (bench_decisions.py --stream)."""

    def __init__(self) -> None:
        self.final: dict[str, dict] = {}

    def after_evaluation(self, learner, i: int, j: int, data, scores, row: dict) -> None:
        from edgead.cl.calibration import DRIFT_RULE, rescale
        from edgead.cl.deployed import deployed_row
        from edgead.engine.evaluate import fit_calibration

        t = learner.train_cfg
        oracle = fit_calibration(learner.model, data.val, learner.pre, t.device, rule=t.threshold_rule,
                                 seed=j).threshold
        last = learner.fit_cals[i]
        # the default recalibration's threshold beside a refitted one (same training: thresholds never train)
        anchors = learner.fit_cals[j].threshold if j == i else rescale(learner.fit_cals[j], DRIFT_RULE.factor(learner.anchors.ratio(
            learner.model, j))).threshold
        row.update(deployed_row(data.test.labels, scores, agnostic=learner.model.calibration.threshold,
                                anchors=anchors,
                                last_task=last.threshold, fit=learner.fit_cals[j].threshold, oracle=oracle,
                                before=float("nan") if last.legacy_threshold is None else last.legacy_threshold))
        cal = learner.cals[j]  # what `edgead calibrate` would start from after this task
        self.final[learner.names[j]] = {
            "labels": [int(v) for v in data.test.labels], "scores": [float(v) for v in scores],
            "defect_types": [t or "good" for t in data.test.defect_types],
            "calibration": {"threshold": cal.threshold, "score_mean": cal.score_mean, "score_std": cal.score_std,
                            "n_images": cal.n_images}}


def run_one(data: str, tasks: list[str], method: str, seed: int, image_size: int, epochs: int,
            budget_bytes: int | None = None, memory_size: int | None = None, weights: str | None = None,
            device_trunk: str | None = None, work_dir: str | None = None, calibration_anchors: int = 1,
            max_train: int | None = None, latent_crop: str = "auto", threshold_rule: str | None = None,
            recalibrate: str = "anchors") -> dict:
    """One run_stream of the sweep -> its numbers (or {"infeasible": why} for a budget below one sample)."""
    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data import TaskStream
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=image_size)
    kw: dict = {"strategy": method if method in ("finetune", "joint", "replay") else "compressed-replay"}
    if method in CODECS:
        kw["codec"] = method
    if method in ("replay", *CODECS):
        kw.update({"budget_bytes": budget_bytes} if budget_bytes is not None else {"memory_size": memory_size})
    if method == "int8-device":
        kw["device_trunk"] = Path(device_trunk)
    out = Path(tempfile.mkdtemp(prefix="real_", dir=work_dir))
    t0 = time.perf_counter()
    try:
        replay = ReplayConfig(calibration_anchors=calibration_anchors, latent_crop=latent_crop,
                              recalibrate=recalibrate, **kw)
        # epochs 0: edgead's default budget (20 epochs, or the budget floor on a small task)
        train = TrainConfig(epochs=epochs or None, seed=seed, progress=False,
                            **({"threshold_rule": threshold_rule} if threshold_rule else {}))
        research = ResearchThresholds()
        res = run_stream(TaskStream(data, tasks, max_train=max_train), det, train, replay,
                         out, weights=weights, log=lambda m: None, command="bench_real_stream",
                         plugins=[research])
    except (EdgeadError, UserError) as e:
        if "replay budget" not in str(e):  # only "less than one sample" is a result
            raise
        return {"infeasible": str(e)}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    m, mem, dep = res["metrics"], res["memory"], res["deployed"]
    return {
        "image_auroc": m["image_auroc"]["final_average"],
        "pixel_auroc": m["pixel_auroc"]["final_average"],
        "aupro": m["aupro"]["final_average"],
        "pixel_tasks": m["pixel_auroc"].get("final_average_tasks"),
        "img_forget_abs": m["image_auroc"]["forgetting_absolute"],
        "pix_forget_abs": m["pixel_auroc"]["forgetting_absolute"],
        "aupro_forget_abs": m["aupro"]["forgetting_absolute"],
        **{f"deployed_f1_{k}": v for k, v in dep["final_average"].items()},
        **{f"deployed_bacc_{k}": v for k, v in dep["balanced_accuracy"]["final_average"].items()},
        "threshold_error_task": dep["threshold_error_vs_oracle"]["task"],
        "threshold_error_fit": dep["threshold_error_vs_oracle"]["fit"],
        "deployed_per_task": dep["per_task"],
        "deployed_bacc_per_task": dep["balanced_accuracy"]["per_task"],
        # at each task's own threshold: false alarms, catch rate, normals behind it, ceiling (evaluation only)
        "deployed_fpr_task": dep.get("decisions", {}).get("final_average", {}).get("false_alarm_rate"),
        "deployed_tpr_task": dep.get("decisions", {}).get("final_average", {}).get("catch_rate"),
        "deployed_decisions_per_task": dep.get("decisions", {}).get("per_task"),
        "additional_bytes": mem["additional_bytes"],
        "calibration_bytes": mem["calibration_bytes"],
        "calibration_set_bytes": mem.get("calibration_set_bytes", 0),
        "recalibrate": res["config"].get("recalibrate", "anchors"),
        "total_bytes": mem["total_bytes"],
        "buffer_samples": int(sum(mem["buffer_samples"].values())),
        "buffer_per_task": mem["buffer_samples"],
        "latent_crop": mem.get("latent_crop"),
        "threshold_rule": res["config"]["train"].get("threshold_rule"),  # [C, side, side] when latents are kept as crops
        "image_auroc_matrix": m["image_auroc"]["matrix"],
        "pixel_auroc_matrix": m["pixel_auroc"]["matrix"],
        "aupro_matrix": m["aupro"]["matrix"],
        "wall_s": time.perf_counter() - t0,
        "final_scores": research.final,
    }


def plan(tasks, methods, budgets, memory_size, seeds) -> list[tuple[str, str, int | None, int | None, int]]:
    """(method, setting, budget_bytes, memory_size, seed) of every run: methods x (budgets + count) x seeds."""
    out = []
    for seed in seeds:
        for m in methods:
            if m in ("finetune", "joint"):
                out.append((m, "none", None, None, seed))
                continue
            out += [(m, f"budget {short_size(b)}", b, None, seed) for b in budgets]
            if memory_size:
                out.append((m, f"count {memory_size}", None, memory_size, seed))
    return out


def short_size(n: int) -> str:
    """50000 -> '50kB', 2460000 -> '2.46MB' (labels and file names)."""
    return f"{n / 1e6:g}MB" if n >= 1_000_000 else f"{n / 1e3:g}kB" if n >= 1000 else f"{n}B"


def _key(method, budget, memory_size, seed) -> str:
    where = f"b{budget}" if budget is not None else f"n{memory_size}" if memory_size is not None else "none"
    return f"{method}__{where}__s{seed}"


def with_before(row: dict) -> dict:
    """A run from before the ``before`` threshold kind existed: with the legacy rule, the last task's threshold
    as fitted is exactly what was exported before (the same number)."""
    if "deployed_f1_before" not in row and row.get("threshold_rule") in (None, LEGACY_THRESHOLD_RULE):
        return {**row, "deployed_f1_before": row.get("deployed_f1_last_task")}
    return row


def summarise(runs: list[dict]) -> list[dict]:
    runs = [with_before(r) for r in runs]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if not r.get("infeasible") and not r.get("failed"):
            groups.setdefault((r["method"], r["setting"]), []).append(r)
    out = []
    for (method, setting), g in groups.items():
        row = {"method": method, "setting": setting, "budget_bytes": g[0]["budget_bytes"],
               "memory_size": g[0]["memory_size"], "seeds": len(g)}
        for k in KEYS:
            vals = np.array([np.nan if r.get(k) is None else r[k] for r in g], float)
            ok = np.isfinite(vals).any()
            row[k] = float(np.nanmean(vals)) if ok else None
            row[f"{k}_std"] = float(np.nanstd(vals)) if ok else None
        mats = [np.array([[np.nan if v is None else v for v in row_] + [np.nan] * (len(r["image_auroc_matrix"])
                          - len(row_)) for row_ in r["image_auroc_matrix"]], float) for r in g]
        with warnings.catch_warnings():  # a cell no seed has (above the diagonal) stays empty
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(np.stack(mats), axis=0) if mats else None
        row["image_auroc_matrix"] = None if mean is None else [[None if not np.isfinite(v) else float(v)
                                                                for v in r_] for r_ in mean]
        out.append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    out.sort(key=lambda r: (order.get(r["method"], 99), r["budget_bytes"] or 0, r["memory_size"] or 0))
    return out


def expectations(summary: list[dict], n_tasks: int, image_size: int) -> list[dict]:
    out = []
    by = {(r["method"], r["setting"]): r for r in summary}
    ft, jt = by.get(("finetune", "none")), by.get(("joint", "none"))
    budgeted = [r for r in summary if r["setting"].startswith("budget")]
    if ft and jt:
        out.append(check("fine-tuning forgets clearly (abs. image-AUROC forgetting >= joint's + 0.02)",
                         ft["img_forget_abs"] >= jt["img_forget_abs"] + 0.02,
                         f"finetune {ft['img_forget_abs']:.3f} vs joint {jt['img_forget_abs']:.3f}"))
    one_image = n_tasks * image_size * image_size * 3
    below = [r for r in budgeted if r["method"] in CODECS and r["budget_bytes"] < one_image]
    if jt and below:
        best = min(below, key=lambda r: r["img_forget_abs"])
        out.append(check(f"below one image per product ({format_size(one_image)}) the best compressed replay "
                         f"forgets within 0.02 of joint", best["img_forget_abs"] <= jt["img_forget_abs"] + 0.02,
                         f"{best['method']} at {format_size(best['budget_bytes'])}: {best['img_forget_abs']:.3f} "
                         f"vs joint {jt['img_forget_abs']:.3f}"))
    rp = sorted((r for r in budgeted if r["method"] == "replay"), key=lambda r: r["budget_bytes"])
    if rp:
        b = rp[0]["budget_bytes"]
        comp = [r for r in budgeted if r["method"] in CODECS and r["budget_bytes"] == b]
        if comp:
            best = max(comp, key=lambda r: r["image_auroc"])
            out.append(check(f"at the smallest budget image replay fits ({format_size(b)}) the best compressed "
                             f"replay >= image replay (final image AUROC)", best["image_auroc"] >= rp[0]["image_auroc"],
                             f"{best['method']} {best['image_auroc']:.3f} vs replay {rp[0]['image_auroc']:.3f}"))
    counts = {r["method"]: r for r in summary if r["setting"].startswith("count")}
    if "fp32" in counts and "int8-channel" in counts:
        d = counts["int8-channel"]["image_auroc"] - counts["fp32"]["image_auroc"]
        out.append(check("int8-channel within 0.01 image AUROC of fp32 at the same sample count", abs(d) <= 0.01,
                         f"{counts['int8-channel']['image_auroc']:.3f} vs {counts['fp32']['image_auroc']:.3f} "
                         f"({d:+.3f})"))
    for key, what in (("deployed_bacc", "deployed balanced accuracy"), ("deployed_f1", "deployed F1")):
        dep = [r for r in summary if r.get(f"{key}_task") is not None and r.get(f"{key}_before") is not None]
        if dep:
            gain = np.mean([r[f"{key}_task"] - r[f"{key}_before"] for r in dep])
            out.append(check(f"{what} at per-task thresholds vs the single exported threshold of before (reported)",
                             True, f"mean over {len(dep)} configurations {gain:+.3f}; " + ", ".join(
                                 f"{r['method']} {r['setting']}: {r[f'{key}_before']:.3f} -> {r[f'{key}_task']:.3f}"
                                 for r in dep)))
    return out


def plot_pareto(summary: list[dict], path: Path, title: str) -> Path:
    from bench_memory_budget import pareto
    from edgead.plotting import pyplot, save_png

    panels = (("image_auroc", "final average image AUROC", True), ("img_forget_abs", "forgetting (abs. image AUROC)",
                                                                     False))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    pts = [r for r in summary if r["method"] not in ("finetune", "joint")]
    for ax, (key, label, higher) in zip(axes, panels, strict=True):
        for ref, style in (("finetune", ":"), ("joint", "--")):
            for r in summary:
                if r["method"] == ref and r[key] is not None:
                    ax.axhline(r[key], color="k", ls=style, lw=1.1, label=f"{ref} ({short_size(int(r['total_bytes']))}"
                               " anchors)")
        for m in dict.fromkeys(r["method"] for r in pts):
            for mode, marker in (("budget", "o"), ("count", "s")):
                rs = sorted((r for r in pts if r["method"] == m and r["setting"].startswith(mode) and r[key] is not None),
                            key=lambda r: r["total_bytes"])
                if rs:
                    ax.errorbar([r["total_bytes"] for r in rs], [r[key] for r in rs], yerr=[r[f"{key}_std"] or 0.0
                                for r in rs], marker=marker, capsize=2, lw=1.1 if mode == "budget" else 0, ms=4,
                                label=f"{m} ({mode})")
        ok = [r for r in pts if r[key] is not None]
        front = sorted((ok[i] for i in pareto([(r["total_bytes"], r[key]) for r in ok], higher)),
                       key=lambda r: r["total_bytes"])
        ax.plot([r["total_bytes"] for r in front], [r[key] for r in front], ls="--", color="0.4", lw=1, marker="*",
                ms=11, mfc="none", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("bytes kept: replay memory + calibration anchors")
        ax.set_ylabel(label + ("" if higher else " (lower is better)"))
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def heatmaps(summary: list[dict], tasks: list[str], stem: Path) -> list[Path]:
    """m[i][j] of finetune, joint, and of replay and int8-channel at the sample count and at their smallest budget
    that keeps samples (a smaller one keeps nothing and is fine-tuning again)."""
    from edgead.report import plot_matrix

    paths = []
    for m in MAIN:
        rows = [r for r in summary if r["method"] == m and r["image_auroc_matrix"]]
        pick = [r for r in rows if r["setting"] in ("none",) or r["setting"].startswith("count")]
        budget = sorted((r for r in rows if r["setting"].startswith("budget") and r.get("buffer_samples")),
                        key=lambda r: r["budget_bytes"])
        for r in pick + budget[:1]:
            tag = r["setting"].replace(" ", "")
            paths.append(plot_matrix(f"{m} {r['setting']} (mean of {r['seeds']} seed(s))", r["image_auroc_matrix"],
                                     tasks, stem.with_name(f"{stem.name}_matrix_{m}_{tag}.png")))
    return paths


def device_trunk(root: Path, task: str, image_size: int, weights: str | None, where: Path) -> Path:
    """The tflite-int8 trunk the int8-device runs collect with, exported once per sweep folder."""
    from bench_memory_budget import export_device_trunk

    art = where / "trunk_art"
    if not (art / "manifest.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix="trunk_", dir=where))
        export_device_trunk(root, task, image_size, weights, tmp)
        shutil.rmtree(art, ignore_errors=True)
        os.replace(tmp / "trunk_art", art)
        shutil.rmtree(tmp, ignore_errors=True)
    return art


def write_outputs(rows, meta, tasks, a, seeds, out_dir: Path, name: str) -> None:
    """The results JSON and CSV, the table, the Pareto plot and the heatmaps of one set of runs."""
    summary = summarise(rows)
    checks = expectations(summary, len(tasks), a.image_size)
    write_json(out_dir / f"{name}.json", {**meta, "summary": summary, "runs": rows, "checks": checks})
    write_csv(out_dir / f"{name}.csv", [{k: v for k, v in r.items() if k not in (
        "buffer_per_task", "image_auroc_matrix", "pixel_auroc_matrix", "aupro_matrix", "deployed_per_task",
        "deployed_bacc_per_task", "deployed_decisions_per_task")}
        for r in rows])
    print_table(summary, ["method", "setting", "seeds", "image_auroc", "image_auroc_std", "pixel_auroc", "aupro",
                          "img_forget_abs", "deployed_f1_before", "deployed_f1_task", "deployed_bacc_before",
                          "deployed_bacc_task", "deployed_bacc_anchors", "deployed_fpr_task", "deployed_bacc_ceiling",
                          "total_bytes",
                          "buffer_samples"])
    budget = f"{a.epochs} epochs" if a.epochs else "default training budget"
    title = (f"{len(tasks)} real tasks ({', '.join(tasks)}), {a.image_size} px, {budget}, seeds {seeds}; "
             "PaSTe-MCUNet")
    pngs = [plot_pareto(summary, out_dir / f"{name}_pareto.png", title)] if summary else []
    pngs += heatmaps(summary, tasks, out_dir / name)
    print(f"wrote {out_dir / name}.json, .csv and {len(pngs)} PNG(s)")


def _same_run(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "wall_s", "failed"))


def merge(a, argv) -> int:
    """One summary over the runs of several saved results files of the same stream."""
    import json

    rows, sources, seen, first = [], [], {}, None
    for f in [x.strip() for x in a.merge.split(",") if x.strip()]:
        try:
            d = json.loads(Path(f).read_text())
            d["tasks"], d["runs"], d["args"]["image_size"], d["command"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: --merge {f}: not a readable real_stream results file "
                             f"({type(e).__name__}: {e})") from None
        first = first or d
        if d["tasks"] != first["tasks"] or d["args"]["image_size"] != first["args"]["image_size"]:
            raise SystemExit(f"error: --merge {f}: another stream ({d['tasks']} at {d['args']['image_size']} px) "
                             f"than the first file's ({first['tasks']} at {first['args']['image_size']} px)")
        crop = d["args"].get("latent_crop", "auto")
        for r in d["runs"]:
            r = dict(r)
            if crop != "auto" and r["method"] in CODECS:
                r["setting"] = f"{r['setting']} crop {crop}"
            elif "latent_crop" not in r and r["method"] in CODECS and r.get("budget_bytes") and not r.get(
                    "buffer_samples"):  # a run from before latent crops, whose budget kept nothing
                r["setting"] = f"{r['setting']} no crops"
            key = (r["method"], r["setting"], r["seed"])
            if key in seen:
                if _same_run(seen[key][1], r):  # the same run carried into a later sweep: counted once
                    continue
                raise SystemExit(f"error: --merge: {r['method']} {r['setting']} seed {r['seed']} is in both "
                                 f"{seen[key][0]} and {f}, with different results")
            seen[key] = (f, r)
            rows.append(r)
        sources.append({"file": Path(f).name, "command": d["command"], "date": d["date"], "complete": d["complete"]})
    name = f"real_stream{'_' + a.tag if a.tag else ''}"
    args = argparse.Namespace(**{**first["args"], "tag": a.tag, "merge": a.merge})
    seeds = sorted({r["seed"] for r in rows})
    meta = {**header(argv), "merged_from": sources, "args": vars(args), "tasks": first["tasks"],
            "budgets": sorted({r["budget_bytes"] for r in rows if r.get("budget_bytes")}),
            "methods": list(dict.fromkeys(r["method"] for r in rows)),
            "complete": all(s["complete"] for s in sources), "failed": {}}
    write_outputs(rows, meta, first["tasks"], args, seeds, Path(a.out_dir), name)
    return 0


def main(argv: list[str] | None = None) -> int:
    from edgead.cl.config import ReplayConfig
    from edgead.options import add_arguments
    from edgead.sweep import INPUTS, Run, run_sweep

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder holding the converted categories (e.g. /tmp/real)")
    p.add_argument("--tasks", default=",".join(REAL_ORDER), help="comma list, in stream order")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budgets", default=BUDGETS, help="comma list of sizes (B, kB, KiB, MB, MiB)")
    p.add_argument("--memory-size", type=int, default=100, help="the sample-count setting (0: none)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=10,
                   help="epochs per task; 0: edgead's default budget (20 epochs, or 1000 steps at batch 8 when those "
                        "give fewer than 300 optimiser steps)")
    p.add_argument("--max-train", type=int, default=None,
                   help="at most N normal training images per task (seeded draw; default: all)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--weights", default=os.environ.get("EDGEAD_WEIGHTS_DIR"))
    add_arguments(p, ReplayConfig, "calibration_anchors", "latent_crop", "recalibrate")  # edgead's own definitions
    p.add_argument("--threshold-rule", default=None,
                   help="the runs' deployment threshold rule (default: edgead's default, docs/thresholds.md)")
    p.add_argument("--jobs", type=int, default=1, help="local processes (with --ray local: its CPUs)")
    p.add_argument("--ray", default=None, help="run on Ray: a cluster address, auto, or local")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--resume", action="store_true", help="reuse a sweep folder that holds another sweep")
    p.add_argument("--sweep-dir", default=None, help="per-run results (default OUT_DIR/real_stream[_TAG]_runs)")
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", "--out", dest="out_dir", default=str(RESULTS))
    p.add_argument("--quick", action="store_true", help="synthetic 2-task stream at 64 px, 1 epoch, 1 seed")
    p.add_argument("--merge", default=None,
                   help="comma list of saved real_stream results files of the same stream: one summary, checks and "
                        "plots over all their runs, written under --tag (runs with a --latent-crop other than auto "
                        "get it in their setting; a run present in two files is refused)")
    p.add_argument("--lifecycle", action="store_true",
                   help="the stream as separate `learn` calls plus a device hand-off, against one call (first "
                        "method, budget and seed; benchmarks/real_lifecycle.py)")
    a = p.parse_args(argv)
    if a.merge:
        return merge(a, argv)
    if a.quick and a.lifecycle:
        a.methods = "int8-channel" if a.methods == ",".join(METHODS) else a.methods
        a.tasks, a.image_size, a.epochs, a.seeds, a.budgets, a.tag = "brick,nut", 64, 1, "0", "12kB", a.tag or "quick"
    elif a.quick:
        a.tasks, a.image_size, a.epochs, a.seeds = "brick,nut", 64, 1, "0"
        a.methods = "finetune,joint,replay,int8-channel" if a.methods == ",".join(METHODS) else a.methods
        a.budgets, a.memory_size, a.tag = "30kB", 4, a.tag or "quick"
    name = f"real_{'lifecycle' if a.lifecycle else 'stream'}{'_' + a.tag if a.tag else ''}"
    out_dir = Path(a.out_dir)
    sweep_dir = Path(a.sweep_dir) if a.sweep_dir else out_dir / f"{name}_runs"
    inputs = sweep_dir / INPUTS
    if a.quick and not a.data:  # generated once into the sweep folder: a rerun finds the same runs finished
        from edgead.data.synth import generate_dataset

        if not (inputs / "synth" / "nut" / "test").is_dir():
            generate_dataset(inputs / "synth_tmp", parse_tasks(a.tasks), seed=0, image_size=64, n_train=10, n_test=4)
            shutil.rmtree(inputs / "synth", ignore_errors=True)
            os.replace(inputs / "synth_tmp", inputs / "synth")
        a.data = str(inputs / "synth")
    if not a.data:
        raise SystemExit("error: --data FOLDER (the converted real categories) is required, or --quick")
    tasks = parse_tasks(a.tasks)
    if a.lifecycle:
        from real_lifecycle import lifecycle_main

        sweep_dir.mkdir(parents=True, exist_ok=True)
        a.sweep_dir = str(sweep_dir)
        return lifecycle_main(a, argv, tasks, out_dir, name)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"error: --methods {', '.join(bad)}: expected some of {', '.join(METHODS)}")
    try:
        budgets = sorted({parse_size(b.strip()) for b in a.budgets.split(",") if b.strip()})
    except UserError as e:
        raise SystemExit(f"error: --budgets: {e}") from None
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    try:
        from edgead.data import TaskStream

        TaskStream(a.data, tasks)  # every category present, before a sweep starts
    except EdgeadError as e:
        raise SystemExit(f"error: {e}") from None
    meta = {**header(argv), "args": vars(a), "tasks": tasks, "budgets": budgets, "methods": methods}
    try:
        trunk = None
        if "int8-device" in methods:
            inputs.mkdir(parents=True, exist_ok=True)
            trunk = str(device_trunk(Path(a.data), tasks[0], a.image_size, a.weights, inputs))
        specs = plan(tasks, methods, budgets, a.memory_size, seeds)
        inputs_read = tuple(p for p in (str(Path(a.data).resolve()), trunk, a.weights) if p)
        runs = [Run(_key(m, b, n, s), "bench_real_stream:run_one",
                    {"data": str(Path(a.data).resolve()), "tasks": tasks, "method": m, "seed": s,
                     "image_size": a.image_size, "epochs": a.epochs, "budget_bytes": b, "memory_size": n,
                     "weights": a.weights, "device_trunk": trunk if m == "int8-device" else None,
                     **({"calibration_anchors": a.calibration_anchors} if a.calibration_anchors != 1 else {}),
                     **({"max_train": a.max_train} if a.max_train is not None else {}),
                     **({"latent_crop": a.latent_crop} if a.latent_crop != "auto" else {}),
                     **({"threshold_rule": a.threshold_rule} if a.threshold_rule else {}),
                     **({"recalibrate": a.recalibrate} if a.recalibrate != "anchors" else {})},
                    inputs=inputs_read)  # their content is in each run's spec: changed data runs again
                for m, _, b, n, s in specs]
        res = run_sweep(name, runs, sweep_dir, jobs=a.jobs, ray=a.ray, threads=a.threads, resume=a.resume,
                        progress=True, log=lambda m: print(m, flush=True))
    except EdgeadError as e:
        raise SystemExit(f"error: {e}") from None
    rows = []
    for (m, setting, b, n, s), run in zip(specs, runs, strict=True):
        base = {"method": m, "setting": setting, "budget_bytes": b, "memory_size": n, "seed": s}
        if run.key in res.results:
            rows.append({**base, **res.results[run.key]})
        elif run.key in res.failed:
            rows.append({**base, "failed": res.failed[run.key]})
    write_outputs(rows, {**meta, "complete": not res.failed, "failed": res.failed}, tasks, a, seeds, out_dir, name)
    if res.failed:
        print(f"{len(res.failed)} run(s) failed: {', '.join(res.failed)}")
    return 1 if res.failed else 0


if __name__ == "__main__":
    run_as_script(main)
