"""Memory-budget sweep: final quality and forgetting against the bytes the replay memory really occupies.

    python benchmarks/bench_memory_budget.py --image-size 256 --epochs 8 --seeds 0,1     # 4 synthetic tasks
    python benchmarks/bench_memory_budget.py --quick                                     # 64 px, 2 tasks

Budgets (log-spaced, 0.1 MB to 19.66 MB including the thesis's 2.46, 9.83 and 19.66 MB) x methods: image replay
(uint8 images at the training resolution), compressed replay with each codec, and the on-device int8 latents
(`int8-device`: the latents the exported tflite-int8 trunk outputs, collected by firmware_sim exactly as a
device keeps them, replayed on the host). Fine-tuning is the zero-byte point. PaSTe-MCUNet, ImageNet teacher,
each run one `run_stream`.

Two shortcuts that change no number: a budget below one sample per task for a method is reported as
infeasible (its run would be refused or keep nothing); and once a budget keeps every training sample of every
task (the buffer is saturated), larger budgets keep the same samples and train identically, so their row
copies it (`saturated_from`) instead of training again. The x axis is additional_bytes, what the buffer holds.

Writes benchmarks/results/memory_budget[_TAG].json / .csv / .png (three panels: final average image AUROC,
pixel AUROC and absolute image-AUROC forgetting against bytes, log scale, Pareto front marked).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from bench_cl_quality import METRIC_KEYS, run_one
from benchkit import RESULTS, check, header, print_table, run_as_script, write_csv, write_json
from edgead.data import TaskStream
from edgead.data.stream import split_validation
from edgead.data.synth import generate_dataset
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from firmware_sim.codecs import get_codec
from firmware_sim.errors import UserError
from firmware_sim.sizes import format_size, parse_size

BUDGETS = "0.1MB,0.25MB,0.6MB,1MB,2.46MB,5MB,9.83MB,19.66MB"
METHODS = "replay,fp32,int8-channel,int8-tensor,int4-channel,pca,int8-device"
PLOTTED = (("image_auroc", "final average image AUROC", True), ("pixel_auroc", "final average pixel AUROC", True),
           ("img_forget_abs", "forgetting (abs. image AUROC)", False))


def conf_for(method: str, budget: int, device_trunk: Path | None) -> dict:
    if method == "replay":
        return {"setting": "budget", "strategy": "replay", "codec": None, "budget_bytes": budget}
    conf = {"setting": "budget", "strategy": "compressed-replay", "codec": method, "budget_bytes": budget}
    if method == "int8-device":
        conf["device_trunk"] = device_trunk
    return conf


def train_counts(root: Path, tasks: list[str], val_fraction: float, seed: int) -> dict[str, int]:
    """Training images per task after the held-out split, as run_stream splits them."""
    out = {}
    for t in TaskStream(root, tasks).tasks:
        n = len(t.index_files(False).train)
        out[t.name] = len(split_validation(n, val_fraction, seed, key=t.name)[0])
    return out


def export_device_trunk(root: Path, task: str, image_size: int, weights: str | None, tmp: Path) -> Path:
    """The int8 trunk a device would run: a PaSTe run on the first task (1 epoch: the trunk is the frozen
    ImageNet one whatever the training) exported to tflite-int8, calibrated on that task's normals."""
    from edgead.export.pipeline import ExportOptions, export_run

    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.models.teacher_student import DetectorConfig

    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=image_size)
    run_stream(TaskStream(root, [task]), det, TrainConfig(epochs=1, progress=False), ReplayConfig(),
               tmp / "trunk_run", weights=weights, log=lambda m: None)
    n = train_counts(root, [task], TrainConfig().val_fraction, 0)[task]
    export_run(tmp / "trunk_run", tmp / "trunk_art", ExportOptions(formats=["tflite-int8"], calibration=min(32, n),
                                                                  allow_drift=True))
    return tmp / "trunk_art"


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both fewer bytes and a better metric."""
    sign = 1.0 if higher_is_better else -1.0
    front, best = [], -np.inf
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1])):
        if sign * points[i][1] > best:
            front.append(i)
            best = sign * points[i][1]
    return front


def summarise(runs: list[dict]) -> list[dict]:
    rows: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("infeasible"):
            continue
        rows.setdefault((r["method"], r["budget_bytes"]), []).append(r)
    out = []
    for (method, budget), g in rows.items():
        row = {"method": method, "budget_bytes": budget, "seeds": len(g),
               "saturated_from": g[0].get("saturated_from")}
        for k in METRIC_KEYS:
            vals = np.array([np.nan if r.get(k) is None else r[k] for r in g], float)
            ok = np.isfinite(vals).any()
            row[k] = float(np.nanmean(vals)) if ok else None
            row[f"{k}_std"] = float(np.nanstd(vals)) if ok else None
        out.append(row)
    out.sort(key=lambda r: (r["method"], r["budget_bytes"]))
    for key, _, higher in PLOTTED:
        pts = [(r["additional_bytes"], r[key]) for r in out]
        for i in pareto(pts, higher):
            out[i][f"pareto_{key}"] = True
    return out


def plot(summary: list[dict], path: Path, title: str) -> Path:
    from edgead.plotting import pyplot, save_png

    plt = pyplot()
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5.2 * len(PLOTTED), 4.2))
    methods = sorted({r["method"] for r in summary}, key=lambda m: (m != "finetune", m != "replay", m))
    for ax, (key, label, higher) in zip(axes, PLOTTED, strict=True):
        for m in methods:
            rs = sorted((r for r in summary if r["method"] == m and r[key] is not None),
                        key=lambda r: r["additional_bytes"])
            if m == "finetune":  # 0 B has no place on a log axis: a reference line
                for r in rs:
                    ax.axhline(r[key], color="k", ls=":", lw=1.2, label="finetune (0 B)")
                continue
            ax.errorbar([r["additional_bytes"] for r in rs], [r[key] for r in rs],
                        yerr=[r[f"{key}_std"] or 0.0 for r in rs], label=m, marker="o", capsize=2, lw=1.2, ms=4)
        front = sorted((r for r in summary if r.get(f"pareto_{key}") and r["additional_bytes"] > 0),
                       key=lambda r: r["additional_bytes"])
        ax.plot([r["additional_bytes"] for r in front], [r[key] for r in front], ls="--", color="0.4",
                lw=1, marker="*", ms=11, mfc="none", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("additional memory: bytes the buffer holds")
        ax.set_ylabel(label + (" (lower is better)" if not higher else ""))
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def expectations(summary: list[dict], ref_budget: int) -> list[dict]:
    at = {r["method"]: r for r in summary if r["budget_bytes"] == ref_budget}
    out = []
    rp = at.get("replay")
    comp = [r for m, r in at.items() if m not in ("replay", "finetune")]
    if rp and comp:
        best = max(comp, key=lambda r: r["image_auroc"])
        out.append(check(f"at {format_size(ref_budget)} the best compressed replay >= image replay (image AUROC)",
                         best["image_auroc"] >= rp["image_auroc"],
                         f"{best['method']} {best['image_auroc']:.3f} vs replay {rp['image_auroc']:.3f}"))
        out.append(check(f"at {format_size(ref_budget)} the best compressed replay forgets <= image replay",
                         best["img_forget_abs"] <= rp["img_forget_abs"],
                         f"{best['method']} {best['img_forget_abs']:.3f} vs replay {rp['img_forget_abs']:.3f}"))
    dev, ch = at.get("int8-device"), at.get("int8-channel")
    if dev and ch:
        d = dev["image_auroc"] - ch["image_auroc"]
        out.append(check(f"on-device int8 latents within 0.01 image AUROC of the host's int8-channel codec at "
                         f"{format_size(ref_budget)}", abs(d) <= 0.01,
                         f"{dev['image_auroc']:.3f} vs {ch['image_auroc']:.3f} ({d:+.3f}); samples "
                         f"{dev['buffer_samples']:.0f} vs {ch['buffer_samples']:.0f}"))
    front = [r for r in summary if r.get("pareto_image_auroc")]
    if front:
        out.append(check("Pareto front on image AUROC (reported)", True,
                         ", ".join(f"{r['method']}@{format_size(int(r['additional_bytes']))} "
                                   f"{r['image_auroc']:.3f}" for r in front)))
    return out


def write_all(out_dir: Path, tag: str, meta: dict, runs: list[dict], final: bool) -> list[dict]:
    """JSON + CSV (always: partial results survive an interruption); the checks and the plot when final."""
    summary = summarise(runs)
    args = meta["args"]
    checks = expectations(summary, parse_size(args["reference"])) if final else []
    name = f"memory_budget{'_' + tag if tag else ''}"
    write_json(out_dir / f"{name}.json", {**meta, "complete": final, "summary": summary, "runs": runs,
                                          "checks": checks})
    write_csv(out_dir / f"{name}.csv",
              [{k: v for k, v in r.items() if k not in ("buffer_per_task", "image_auroc_matrix")} for r in runs])
    if final:
        print_table(summary, ["method", "budget_bytes", "seeds", "image_auroc", "image_auroc_std", "pixel_auroc",
                              "img_forget_abs", "additional_bytes", "buffer_samples", "saturated_from"])
        title = (f"{len(meta['tasks'])} tasks ({', '.join(meta['tasks'])}), {args['image_size']} px, "
                 f"{args['epochs']} epochs, seeds {sorted({r['seed'] for r in runs})}; PaSTe-MCUNet")
        png = plot(summary, out_dir / f"{name}.png", title)
        print(f"wrote {out_dir / name}.json, .csv and {png}")
    return summary


def merge(files: list[Path], out_dir: Path, tag: str) -> int:
    import json

    saved = [json.loads(f.read_text()) for f in files]
    first = saved[0]
    if any(s["tasks"] != first["tasks"] or s["args"]["image_size"] != first["args"]["image_size"] for s in saved):
        raise SystemExit("error: --from-json files differ in tasks or image size; they cannot be merged")
    meta = {k: first[k] for k in ("date", "machine", "tasks", "budgets", "methods")}
    meta["command"] = " | ".join(s["command"] for s in saved)
    meta["args"] = {**first["args"], "tag": tag, "seeds": ",".join(s["args"]["seeds"] for s in saved)}
    write_all(out_dir, tag, meta, [r for s in saved for r in s["runs"]], final=all(s["complete"] for s in saved))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MVTec-layout root holding --tasks (default: generate synthetic)")
    p.add_argument("--tasks", default="brick,grass,nut,pill")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--train", type=int, default=30, help="synthetic train images per task")
    p.add_argument("--test", type=int, default=16, help="synthetic good test images per task")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", default="0")
    p.add_argument("--budgets", default=BUDGETS, help="comma list of sizes (B, kB, KiB, MB, MiB)")
    p.add_argument("--methods", default=METHODS, help="replay and/or codecs (int8-device: the device's latents)")
    p.add_argument("--reference", default="2.46MB", help="budget at which the methods are compared head to head")
    p.add_argument("--weights", default=os.environ.get("EDGEAD_WEIGHTS_DIR"))
    p.add_argument("--tag", default="")
    p.add_argument("--out", "--out-dir", dest="out_dir", default=str(RESULTS), help="folder for the results files")
    p.add_argument("--quick", action="store_true", help="64 px, 2 tasks, 1 epoch, 3 budgets, 3 methods")
    p.add_argument("--from-json", default=None,
                   help="merge the runs of saved results files (e.g. one per seed, run in parallel) under --tag")
    a = p.parse_args(argv)
    if a.from_json:
        return merge([Path(f) for f in a.from_json.split(",")], Path(a.out_dir), a.tag)
    if a.quick:
        a.data, a.tasks, a.image_size, a.train, a.test, a.epochs, a.seeds = None, "brick,nut", 64, 10, 4, 1, "0"
        a.budgets, a.methods, a.reference = "8kB,1MB,2MB", "replay,int8-channel,int8-device", "1MB"
        a.tag = a.tag or "quick"
    try:
        budgets = sorted({parse_size(b.strip()) for b in a.budgets.split(",") if b.strip()})
        parse_size(a.reference)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    try:  # a typo must fail here, not be reported as an infeasible point at every budget
        [get_codec(m) for m in methods if m != "replay"]
    except UserError as e:
        raise SystemExit(f"error: --methods: {e}") from None
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if not budgets or not methods or not seeds:
        raise SystemExit("error: --budgets, --methods and --seeds each need at least one value")
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    meta = {**header(argv), "args": vars(a), "tasks": tasks, "budgets": budgets, "methods": methods}
    out_dir = Path(a.out_dir)
    runs: list[dict] = []

    with tempfile.TemporaryDirectory(prefix="bench_mb_") as td:
        tmp = Path(td)
        root = Path(a.data) if a.data else generate_dataset(tmp / "synth", tasks, seed=0, image_size=a.image_size,
                                                            n_train=a.train, n_test=a.test)
        trunk = export_device_trunk(root, tasks[0], a.image_size, a.weights, tmp) if "int8-device" in methods \
            else None
        for seed in seeds:
            counts = train_counts(root, tasks, TrainConfig().val_fraction, seed)
            ft = run_one(root, tasks, {"setting": "none", "strategy": "finetune", "codec": None},
                         image_size=a.image_size, epochs=a.epochs, seed=seed, weights=a.weights, tmp=tmp)
            runs.append({"method": "finetune", "budget_bytes": 0, "seed": seed, **ft})
            for method in methods:
                saturated: dict | None = None
                for budget in budgets:
                    row = {"method": method, "budget_bytes": budget, "seed": seed}
                    if saturated is not None:
                        runs.append({**saturated, **row, "saturated_from": saturated["budget_bytes"]})
                        continue
                    try:
                        r = run_one(root, tasks, conf_for(method, budget, trunk), image_size=a.image_size,
                                    epochs=a.epochs, seed=seed, weights=a.weights, tmp=tmp)
                    except (EdgeadError, UserError) as e:
                        if "replay budget" not in str(e):  # only "less than one sample" is a result here
                            raise
                        runs.append({**row, "infeasible": str(e)})
                        print(f"seed {seed} {method:13s} {format_size(budget):>9s}  infeasible: {e}", flush=True)
                        continue
                    per_task = r["buffer_per_task"]
                    if r["buffer_samples"] == 0:  # trained, but ends holding nothing: not a point at its budget
                        runs.append({**row, **r, "infeasible": "keeps no sample after the last task"})
                        continue
                    runs.append({**row, **r})
                    print(f"seed {seed} {method:13s} {format_size(budget):>9s}  img {r['image_auroc']:.3f} pix "
                          f"{r['pixel_auroc']:.3f} forget {r['img_forget_abs']:+.3f}  bytes "
                          f"{r['additional_bytes']:,} samples {r['buffer_samples']} ({r['wall_s']:.0f} s)",
                          flush=True)
                    if all(per_task.get(t, 0) >= n for t, n in counts.items()):
                        saturated = runs[-1]
                write_all(out_dir, a.tag, meta, runs, final=False)
    write_all(out_dir, a.tag, meta, runs, final=True)
    return 0


if __name__ == "__main__":
    run_as_script(main)
