"""Regenerate benchmarks/README.md from the result files in benchmarks/results (never typed in by hand).

    python benchmarks/summarize.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchkit import RESULTS
from firmware_sim.atomic import atomic_write_text

README = Path(__file__).resolve().parent / "README.md"
INTRO = """# Benchmarks

Scripts that measure edgead; each writes JSON (and CSV where tabular) with its command, date and machine
to `results/`. This page is regenerated from those files by `python benchmarks/summarize.py`.

| script | what |
|---|---|
| `bench_metrics.py` | pixel metrics on 100 maps of 256x256: time and peak memory, against scikit-learn |
| `bench_single_task.py` | PaSTe vs STFPM (MCUNet-in3), ImageNet vs random teacher, on Magnetic-Tile and synthetic data |
| `bench_cl_speed.py` | time per epoch: compressed replay vs image replay vs fine-tuning, one run |
| `bench_cl_quality.py` | a 4-task stream: fine-tuning, image replay, compressed replay per codec; same count and 2.46 MB |
| `bench_memory_budget.py` | budgets 0.1-19.66 MB x image replay / each codec / the device's int8 latents; Pareto plot |
| `bench_real_stream.py` | the real product stream: finetune / joint / replay / each codec x 50 kB-2.46 MB and 100 samples x seeds, as one sweep (`--jobs`, `--ray`); deployed F1 at stored thresholds |
| `bench_peer.py` | anomalib's STFPM (own venv) beside edgead's PaSTe and STFPM on the same split |
| `python -m export.study_size RUN` | int8 TFLite bytes broken down; per-channel / per-tensor / mixed |
| `bench_speed.py` | 3 models x float torch / onnx / onnx-int8 / tflite-int8: latency, memory, size, MACs |
| `bench_scaling.py` | training time per task and memory vs number of tasks (2, 4, 8) at a fixed budget |
| `thesis.py` (`edgead bench thesis`) | the seed thesis's table over MVTec AD (needs the dataset) |
| `bench_threshold.py` | deployment threshold rules (quantile, mean + k std, pseudo-defect F1) on the real categories: chosen on a dev half, reported on the other |
| `bench_recipe.py` | training recipes and `--resize` modes on the real categories: chosen on a dev half, reported on the other |
"""


def _fmt(v, nd=3):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def _head(d: dict) -> str:
    m = d.get("machine", {})
    return f"`{d.get('command', '?')}` — {d.get('date', '?')}, {m.get('platform', '?')}, {m.get('cpu_count', '?')} CPUs"


def _checks(d: dict) -> str:
    return "\n".join(f"- {'PASS' if c['pass'] else 'FAIL'}: {c['check']} ({c['detail']})" for c in d.get("checks", []))


SPEED_COLS = ["model", "format", "runtime", "p50_ms", "p95_ms", "speedup_vs_base", "peak_rss_mib",
              "rss_vs_base", "file_bytes", "size_vs_base", "macs", "macs_vs_base"]


def _load(d: dict) -> str:
    """How busy the machine was (1-minute load average at start and end), where the results record it."""
    la = d.get("load_average")
    if not la:
        return ""
    cpus = d.get("machine", {}).get("cpu_count", "?")
    return (f" Load average (1 min) {la['start'][0]:.1f} at the start and {la['end'][0]:.1f} at the end, on "
            f"{cpus} CPUs: other jobs shared the machine, so timings are noisy.")


def _speed(d: dict, name: str) -> str:
    rows = [r if r["supported"] else {**r, "p50_ms": "not supported"} for r in d["rows"]]
    unsupported = "\n".join(f"- not supported: {r['model']} {r['format']}: {r['reason']}"
                            for r in d["rows"] if not r["supported"])
    models = [{"model": m["label"], "params": m["params"], "macs": m["macs"],
               "architecture_bytes_fp32": m["architecture_bytes_fp32"], "train_epoch_s": m["train_epoch_s"],
               "train_images": m["synthetic_train_images"]} for m in d["models"].values()]
    parts = [f"## Speed: {name}\n\n{_head(d)}. {d.get('notes', '')}{_load(d)}\n",
             "Ratios are against STFPM-ResNet18 float torch of the same run (speedup > 1: faster; rss, size, "
             "MACs < 1: smaller).\n", _table(rows, SPEED_COLS), "", unsupported,
             f"\n![speed](results/{name}.png)\n\nTraining time per epoch, per model (fine-tuning, "
             f"{d['settings']['epochs']} epoch(s) at {d['settings']['image_size']} px, median):\n",
             _table(models, ["model", "params", "macs", "architecture_bytes_fp32", "train_images",
                             "train_epoch_s"])]
    st = d.get("training_per_strategy")
    if st:
        srows = [{"strategy": k, **v} for k, v in st["per_strategy"].items()]
        parts += [f"\nTraining time per epoch, per CL strategy (`{st['command']}`, PaSTe-MCUNet, task 2):\n",
                  _table(srows, ["strategy", "epoch_seconds_task2", "prepare_seconds_task2",
                                 "replay_per_batch", "additional_bytes"]),
                  f"\nCompressed replay {st['speedup_compressed_vs_image_replay']:.2f}x faster per epoch "
                  "than image replay."]
    return "\n".join(parts) + f"\n\n{_checks(d)}\n"


def _scaling(d: dict, name: str) -> str:
    per_task = [{"strategy": s["strategy"], "n_tasks": s["n_tasks"],
                 "train_s per task": ", ".join(f"{t['train_s']:.2f}" for t in s["per_task"]),
                 "buffer_bytes per task": ", ".join(f"{t['buffer_bytes']:,}" for t in s["per_task"]),
                 "peak_rss_mib per task": ", ".join(f"{t['peak_rss_bytes'] / 2**20:.0f}"
                                                    for t in s["per_task"])}
                for s in d["streams"]]
    cfg = d["settings"]
    cols = ["strategy", "n_tasks", "train_s_per_task", "epoch_s", "prepare_s", "eval_s_last",
            "max_buffer_bytes", "budget_bytes", "peak_rss_first_task_mib", "peak_rss_mib", "wall_s"]
    return (f"## Scaling with the number of tasks: {name}\n\n{_head(d)}. {d.get('notes', '')}. "
            f"{cfg['image_size']} px, {cfg['train']} training images per task, {cfg['epochs']} epoch(s), "
            f"budget {cfg['budget']:,} B; peak resident memory {d['streams'][0]['peak_rss_scope']}."
            f"{_load(d)}\n\n"
            f"{_table(d['summary'], cols)}"
            f"\n\n(train_s_per_task, epoch_s, prepare_s: means over tasks 2+, the tasks that replay.)\n\n"
            f"{_table(per_task, list(per_task[0]))}\n\n![scaling](results/{name}.png)\n\n{_checks(d)}\n")


def _memory_budget(d: dict, name: str) -> str:
    rows = [{**r, "pareto (img)": "*" if r.get("pareto_image_auroc") else ""} for r in d["summary"]]
    cols = ["method", "budget_bytes", "seeds", "image_auroc", "image_auroc_std", "pixel_auroc", "img_forget_abs",
            "additional_bytes", "buffer_samples", "saturated_from", "pareto (img)"]
    infeasible = sorted({(r["method"], r["budget_bytes"]) for r in d["runs"] if r.get("infeasible")})
    skipped = ", ".join(f"{m} at {b:,} B" for m, b in infeasible) or "none"
    return (f"## Memory-budget sweep: {name}\n\nTasks: {', '.join(d['tasks'])}. {_head(d)}\n\n"
            f"{_table(rows, cols)}\n\nInfeasible (less than one sample per task, or nothing kept at the end): "
            f"{skipped}. `saturated_from`: the budget already kept every training sample, so the row is that "
            f"run's.\n\n![memory budget](results/{name}.png)\n\n{_checks(d)}\n")


def _export_size(d: dict, name: str) -> str:
    rows = [{"weights": v["weights"], "serialisation": v["serialisation"],
             "trunk+head bytes": v["bytes"]["trunk+head"], "image AUROC delta": v["image_auroc"]["delta"],
             "pixel AUROC delta": v["pixel_auroc"]["delta"], "within tolerance": v["within_tolerance"],
             "<= bar": v["bytes"]["trunk+head"] <= d["bar_bytes"]} for v in d["variants"]]
    return (f"## int8 TFLite size: {name}\n\n{_head(d)}. Bar: trunk + head <= {d['bar_bytes']:,} B; tolerance "
            f"{d['tolerance']}.\n\n{_table(rows, list(rows[0]))}\n")


def _peer(d: dict, name: str) -> str:
    cols = ["model", "backbone", "framework", "teacher", "image_auroc", "pixel_auroc", "p50_ms", "params",
            "param_bytes", "epoch_s", "status"]
    notes = "\n".join(f"- {n}" for n in d.get("notes", []))
    err = f"\n\nPeer environment error: {d['peer_error']}" if d.get("peer_error") else ""
    return (f"## Peer: anomalib beside edgead: {name}\n\n{_head(d)}\n\n{_table(d['rows'], cols)}{err}\n\n"
            f"{notes}\n\n![peer](results/{name}.png)\n\n{_checks(d)}\n")


def _recipe(d: dict, name: str) -> str:
    cols = ["category", "recipe", "half", "seeds", "image_auroc_mean", "image_auroc_std", "pixel_auroc_mean",
            "aupro_mean", "deployed_f1_mean", "train_s_mean"]
    c = d.get("choice") or {}
    per = [{"recipe": r, **{f"{h} {m}": v[h][m] for h in ("dev", "report") for m in ("image_auroc", "pixel_auroc")},
            "train_s (sum)": v["train_s"]} for r, v in c.get("per_recipe", {}).items()]
    limit = f", within {c.get('max_time')}x the `before` training time" if "time_ratio" in c else ""
    chosen = (f"Chosen on the dev halves (mean image AUROC over {', '.join(c['categories'])}{limit}): "
              f"**{c['chosen']}**." if c.get("chosen") else "")
    recipes = "; ".join(f"`{k}`: {', '.join(f'{a}={b}' for a, b in v.items())}" for k, v in d["recipes"].items())
    src = "".join(f"\n- `{m['command']}` ({m['date']})" for m in d.get("merged_from", []))
    src = f"\n\nMerged from the rows of:{src}" if src else ""
    return (f"## Training recipes: {name}\n\n{_head(d)}{src}\n\nRecipes: {recipes}.\n\nMeans over categories "
            f"(pixel metrics over the categories that have masks):\n\n{_table(per, list(per[0]) if per else [])}"
            f"\n\n{chosen}\n\nPer category (mean and std over seeds):\n\n{_table(d['summary'], cols)}\n\n"
            f"{_checks(d)}\n")


def _threshold(d: dict, name: str) -> str:
    c = d["choice"]
    rows = [{k: v for k, v in r.items() if not k.startswith("f1_report_")} for r in d["summary"]]
    cats = sorted(k.removeprefix("f1_report_") for k in d["summary"][0] if k.startswith("f1_report_"))
    per = [{"category": cat, **{r["rule"]: r.get(f"f1_report_{cat}") for r in d["summary"]
                                if r["rule"] in (c["chosen"], c["before"], "best")}} for cat in cats]
    said = (f"Chosen by the {c['by']}: `{c['chosen']}`. On the REPORT halves it catches "
            f"{c['chosen_report_tpr']:.3f} of the defects with a false-alarm rate of {c['chosen_report_fpr']:.3f} "
            f"(deployed F1 {c['chosen_report_f1']:.3f}, balanced accuracy {c['chosen_report_bacc']:.3f})")
    if c.get("before_report_f1") is not None and c["before"] != c["chosen"]:
        said += (f"; `{c['before']}`, the rule before the choice, caught {c['before_report_tpr']:.3f} at "
                 f"{c['before_report_fpr']:.3f} false alarms (F1 {c['before_report_f1']:.3f}, balanced accuracy "
                 f"{c['before_report_bacc']:.3f})")
    return (f"## Deployment threshold rules: {name}\n\n{_head(d)}\n\n{said}. `best` is the best threshold on each "
            f"report half itself, a bound no rule reaches.\n\n"
            f"{_table(rows, ['rule', 'bacc_dev', 'f1_dev', 'fpr_dev', 'bacc_report', 'f1_report', 'fpr_report', 'tpr_report'])}\n\n"
            f"Report-half deployed F1 per category:\n\n{_table(per, list(per[0]))}\n")


def section(path: Path) -> str | None:
    d = json.loads(path.read_text())
    name = path.stem
    if name.startswith("single_task"):
        cols = ["dataset", "model", "teacher", "epochs", "train_images", "image_auroc", "pixel_auroc", "aupro",
                "epoch_s", "selected_epoch", "params", "macs"]
        return f"## Single task: {name}\n\n{_head(d)}\n\n{_table(d['rows'], cols)}\n\n{_checks(d)}\n"
    if name.startswith("cl_quality"):
        cols = ["setting", "method", "seeds", "image_auroc", "image_auroc_std", "pixel_auroc", "img_forget_abs",
                "img_forget_rel", "pixf1_forget_rel", "additional_bytes", "buffer_samples"]
        return (f"## Continual learning quality: {name}\n\nTasks: {', '.join(d.get('tasks', []))}. {_head(d)}\n\n"
                f"{_table(d['summary'], cols)}\n\n{_checks(d)}\n")
    if name.startswith("cl_speed"):
        rows = [{"strategy": k, **v} for k, v in d["per_strategy"].items()]
        t = _table(rows, ["strategy", "epoch_seconds_task2", "prepare_seconds_task2", "replay_per_batch",
                          "additional_bytes"])
        verdict = "PASS" if d["pass"] else "FAIL"
        return (f"## Continual learning speed\n\n{_head(d)}\n\n{t}\n\n- {verdict}: compressed replay "
                f"{d['speedup_compressed_vs_image_replay']:.2f}x faster per epoch than image replay "
                f"(target >= {d['target']}x)\n")
    if name.startswith("memory_budget"):
        return _memory_budget(d, name)
    if name.startswith("export_size"):
        return _export_size(d, name)
    if name.startswith("peer"):
        return _peer(d, name)
    if name.startswith("speed"):
        return _speed(d, name)
    if name.startswith("scaling"):
        return _scaling(d, name)
    if name.startswith("recipe"):
        return _recipe(d, name)
    if name.startswith("threshold"):
        return _threshold(d, name)
    if name.startswith("real_stream"):
        return _real_stream(d, name)
    if name.startswith("decisions"):  # bench_decisions / bench_budget / bench_postprocess: their bars
        lines = f"{_table(d['lines'], list(d['lines'][0]))}\n\n" if d.get("lines") else ""  # a stream's few-label table
        return f"## Decisions: {name}\n\n{_head(d)}\n\n{lines}{_checks(d)}\n"
    if name.startswith("buffer_writes"):
        rows = [{"shape": "x".join(map(str, r["shape"])), "budget": r["budget"],
                 "record_bytes": r["after"]["record_bytes"],
                 "bytes_per_1000_frames_before": r["before"]["bytes_per_1000_frames"],
                 "bytes_per_1000_frames_after": r["after"]["bytes_per_1000_frames"],
                 "per_buffered_frame_after": r["after"]["bytes_per_buffered_frame"],
                 "reduction": r["reduction"], "within_record_plus_64": r["after_within_record_plus_64"]}
                for r in d["rows"]]
        return f"## Device buffer writes\n\n`{d.get('command', '?')}`\n\n{_table(rows, list(rows[0]))}\n"
    if name == "metrics":
        rows = [{"metric": k, **v} for k, v in d["results"].items()] if isinstance(d["results"], dict) else d["results"]
        cols = ["metric", "best_s", "mean_s", "peak_extra_bytes", "memory_multiple_of_maps"]
        return f"## Pixel metrics speed and memory\n\n{_head(d)}\n\n{_table(rows, cols)}\n"
    if name.startswith("device"):
        t = _table(d["latency"], ["model", "format", "runtime", "p50_ms", "p50_vs_tflite_int8"])
        mem = d["memory"]
        return (f"## Device runtime\n\n{_head(d)}. {d['settings'].get('note', '')}\n\n{t}\n\nResident memory "
                f"growth over {mem['n']:,} inferences: {mem['growth']:,} B.\n\n{_checks(d)}\n")
    return None


def _real_stream_reading(d: dict) -> str:
    """What the stream shows, in words, from the numbers of the file (nothing typed in by hand)."""
    rows = {(r["method"], r["setting"]): r for r in d["summary"]}
    ft, jt = rows.get(("finetune", "none")), rows.get(("joint", "none"))
    n = len(d["tasks"])
    one_image = n * d["args"]["image_size"] ** 2 * 3
    said = []
    if ft and jt:
        said.append(f"Fine-tuning forgets: {ft['img_forget_abs']:.3f} absolute image AUROC on average (joint training "
                    f"{jt['img_forget_abs']:.3f}), final image AUROC {ft['image_auroc']:.3f} against joint's "
                    f"{jt['image_auroc']:.3f}.")
    comp = [r for r in d["summary"] if r["method"] not in ("finetune", "joint", "replay") and r["budget_bytes"]
            and r["budget_bytes"] < one_image and r["buffer_samples"]]
    if comp:
        best = min(comp, key=lambda r: r["img_forget_abs"])
        said.append(f"Below one stored image per product ({one_image:,} B for {n} products), {best['method']} latents "
                    f"at {int(best['total_bytes']):,} B ({best['buffer_samples']:.0f} kept) bring forgetting to "
                    f"{best['img_forget_abs']:.3f} and final image AUROC to {best['image_auroc']:.3f}.")
    empty = [r for r in d["summary"] if r["method"] not in ("finetune", "joint") and r["budget_bytes"]
             and not r["buffer_samples"]]
    if empty:
        said.append("Budgets whose equal per-product share holds no whole record keep nothing without latent "
                    "crops, and behave as fine-tuning: " + ", ".join(f"{r['method']} {r['setting']}" for r in empty)
                    + ".")
    cropped = [r for r in d["runs"] if r.get("latent_crop")]
    if cropped:
        sides = sorted({r["latent_crop"][-1] for r in cropped})
        said.append(f"With latent crops (square crops of side {', '.join(map(str, sides))} latent cells) those "
                    "budgets keep every product.")
    dep = [r for r in d["summary"] if r.get("deployed_f1_task") is not None and r.get("deployed_f1_before")
           is not None]
    if dep:
        worse = sum(r["deployed_f1_task"] < r["deployed_f1_before"] for r in dep)
        rules = sorted({str(r.get("threshold_rule") or "quantile:0.99") for r in d["runs"]})
        said.append(f"Deployed F1 at each product's own threshold (rule {', '.join(rules)}, recalibrated by "
                    f"anchors) is below that of the single threshold exported before in {worse} of {len(dep)} "
                    "configurations.")
    bacc = [r for r in d["summary"] if r.get("deployed_bacc_task") is not None and r.get("deployed_bacc_before")
            is not None]
    if bacc:
        better = sum(r["deployed_bacc_task"] > r["deployed_bacc_before"] for r in bacc)
        said.append(f"Balanced accuracy at the same thresholds, which does not reward flagging everything on the "
                    f"mostly defective test sets, is higher at the per-task thresholds in {better} of {len(bacc)}.")
    return " ".join(said)


def _real_stream(d: dict, name: str) -> str:
    cols = ["method", "setting", "seeds", "image_auroc", "pixel_auroc", "aupro", "img_forget_abs", "pix_forget_abs",
            "aupro_forget_abs", "deployed_f1_before", "deployed_f1_task", "deployed_bacc_before", "deployed_bacc_task",
            "total_bytes", "buffer_samples"]
    return (f"## Real product stream: {name}\n\n{_head(d)}\n\nTasks in order: {', '.join(d['tasks'])}. "
            f"{_real_stream_reading(d)}\n\n{_table(d['summary'], cols)}\n\n![pareto](results/{name}_pareto.png)\n\n"
            f"{_checks(d)}\n")


def main() -> Path:
    parts = [INTRO]
    paths = sorted(RESULTS.glob("*.json"))
    merged = set()  # files a merged results file summarises: shown through it, not again on their own
    for path in paths:
        try:
            merged |= {m["file"] for m in json.loads(path.read_text()).get("merged_from", [])}
        except (ValueError, AttributeError, TypeError, KeyError):
            continue
    for path in paths:
        # --quick outputs, per-seed parts (NAME_s0, NAME_s1, ...) and the parts of a merged file
        if path.stem.endswith("_quick") or re.search(r"_s\d+$", path.stem) or path.name in merged:
            continue
        s = section(path)
        if s:
            parts.append(s)
    return atomic_write_text(README, "\n".join(parts))


if __name__ == "__main__":
    print(main())
