"""Speed, resident memory, file size and MACs of STFPM-ResNet18, STFPM-MCUNet and PaSTe-MCUNet per format.

One run, one thread each, the same seeded frames: each model is trained briefly on synthetic data (so a
real checkpoint exists), exported to every interpreter format it supports (`onnx`, `onnx-int8`,
`tflite-int8`; one artifact folder per format, so one format's failure cannot hide another's numbers),
then every (model, format) is loaded and timed back to back, each in a fresh process
(benchmarks/latency.py): p50/p95 latency and peak resident memory (VmHWM) per format, uncontaminated by
the others. Interpreter formats run as the device runs them (firmware_sim.Device: preprocessing + graphs +
numpy distance; that process imports no torch); `torch` is the float checkpoint through model.predict.
Ratios are against STFPM-ResNet18 float torch of the same run. STFPM-ResNet18 has random weights (no
ResNet18 ImageNet file offline): its latency, memory, size and MACs do not depend on the values. Training
time per epoch: per model (the brief training above, fine-tuning) and per CL strategy (bench_cl_speed).
Writes benchmarks/results/speed[_TAG].json, .csv and .png.

    python benchmarks/bench_speed.py [--image-size 256] [--runs 100] [--torch-runs 30] [--quick] [--tag T]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchkit import RESULTS, check, header, print_table, run_as_script, write_csv, write_json
from edgead.errors import EdgeadError
from latency import (
    INTERPRETER_FORMATS,
    export_artifact,
    measure_in_subprocess,
    train_run,
)


@dataclass(frozen=True)
class ModelSpec:
    label: str
    model: str
    backbone: str
    pretrained: bool


MODELS = {
    "stfpm-resnet18": ModelSpec("STFPM-ResNet18 (random weights)", "stfpm", "resnet18", False),
    "stfpm-mcunet": ModelSpec("STFPM-MCUNet", "stfpm", "mcunet-in3", True),
    "paste-mcunet": ModelSpec("PaSTe-MCUNet", "paste", "mcunet-in3", True),
}
FORMATS = ("torch", *INTERPRETER_FORMATS)
BASELINE = ("stfpm-resnet18", "torch")
NOTES = ("STFPM-ResNet18 has random weights (no ResNet18 ImageNet file offline; latency, memory, "
         "size and MACs do not depend on the values). Each (model, format) is timed in its own fresh "
         "process with 1 thread on the same 8 seeded frames; interpreter formats = firmware_sim.Device "
         "(preprocessing + graphs + numpy distance), torch = the float checkpoint through model.predict. "
         "file_bytes: the graph files the device loads (trunk + head for PaSTe), or the torch checkpoint.")
ROW_COLS = ["model", "format", "supported", "p50_ms", "p95_ms", "speedup_vs_base", "peak_rss_mib",
            "rss_vs_base", "file_bytes", "size_vs_base", "macs", "macs_vs_base"]


def _parse(text: str, allowed, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise EdgeadError(f"--{what} {text!r}: expected a comma-separated list of {', '.join(allowed)}")
    return items


def prepare_model(key: str, spec: ModelSpec, data: Path, work: Path, a) -> dict:
    """Train briefly, count the cost, export each requested interpreter format (or say why not)."""
    from edgead.engine.checkpoint import load_checkpoint
    from edgead.models.cost import detector_cost
    from edgead.models.teacher_student import DetectorConfig

    det = DetectorConfig.defaults(spec.model, spec.backbone, image_size=a.image_size,
                                  pretrained=spec.pretrained)
    run = work / "runs" / key
    res = train_run(data, "nut", det, run, epochs=a.epochs, weights=a.weights)
    t = res["timings"]["per_task"][0]
    ckpt = run / "checkpoints" / "task_00.pt"
    cost = detector_cost(load_checkpoint(ckpt)[0])
    info = {"label": spec.label, "model": spec.model, "backbone": spec.backbone,
            "pretrained": spec.pretrained, "params": cost["params"]["total"], "macs": cost["macs"]["total"],
            "macs_parts": cost["macs"],
            "architecture_bytes_fp32": cost["architecture_bytes"]["fp32"],
            "train_epoch_s": float(np.median(t["epoch_seconds"])), "train_prepare_s": t["prepare_seconds"],
            "synthetic_train_images": a.train, "checkpoint": ckpt.relative_to(work).as_posix(), "exports": {}}
    for fmt in (f for f in a.formats if f != "torch"):
        t0 = time.perf_counter()
        info["exports"][fmt] = export_or_reason(work, key, fmt)
        print(f"  {spec.label} {fmt}: {info['exports'][fmt].get('error') or 'exported'} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return info


def export_or_reason(work: Path, key: str, fmt: str) -> dict:
    """Export work/runs/KEY to work/art/KEY/FMT: {'artifact', 'export_s'}, or {'error'} when the model
    cannot take the format (e.g. tflite-int8 for a backbone without a Keras mirror): a row, not a crash."""
    out = work / "art" / key / fmt
    t0 = time.perf_counter()
    try:
        export_artifact(work / "runs" / key, out, [fmt])
    except EdgeadError as e:
        return {"error": str(e)}
    return {"artifact": out.relative_to(work).as_posix(), "export_s": time.perf_counter() - t0}


def graph_files(art: Path, fmt: str) -> list[str]:
    """The files the device loads for this format: trunk + head for PaSTe, the full graph for STFPM."""
    from firmware_sim.manifest import load_manifest

    graphs = load_manifest(art).data["formats"][fmt]["graphs"]
    names = ["trunk", "head"] if "trunk" in graphs and "head" in graphs else ["full"]
    return [graphs[n]["file"] for n in names]


def measure(key: str, info: dict, fmt: str, work: Path, a) -> dict:
    row = {"key": key, "model": info["label"], "format": "float torch" if fmt == "torch" else fmt,
           "macs": info["macs"], "params": info["params"]}
    if fmt == "torch":
        ckpt = work / info["checkpoint"]
        where, files = ckpt.parent, [ckpt.name]
        spec = {"format": "torch", "checkpoint": str(ckpt), "runs": a.torch_runs}
    elif "error" in info["exports"][fmt]:
        return {**row, "supported": False, "reason": info["exports"][fmt]["error"]}
    else:
        where = work / info["exports"][fmt]["artifact"]
        files = graph_files(where, fmt)
        spec = {"format": fmt, "artifact": str(where), "runs": a.runs}
    r = measure_in_subprocess({**spec, "image_size": a.image_size, "warmup": 3, "frames": 8, "seed": 0})
    return {**row, "supported": True, "reason": None, **r, "peak_rss_mib": r["peak_rss_bytes"] / 2**20,
            "file_bytes": sum((where / f).stat().st_size for f in files), "files": files,
            "files_dir": where.relative_to(work).as_posix()}


def add_ratios(rows: list[dict]) -> dict:
    """Ratios against STFPM-ResNet18 float torch: speedup (> 1: faster); memory, size, MACs (< 1: smaller)."""
    base = next(r for r in rows if (r["key"], r["format"]) == (BASELINE[0], "float torch"))
    for r in rows:
        if r["supported"]:
            r["speedup_vs_base"] = base["p50_ms"] / r["p50_ms"]
            r["rss_vs_base"] = r["peak_rss_bytes"] / base["peak_rss_bytes"]
            r["size_vs_base"] = r["file_bytes"] / base["file_bytes"]
            r["macs_vs_base"] = r["macs"] / base["macs"]
    return base


def training_per_strategy(a, work: Path) -> dict | None:
    """bench_cl_speed's side-by-side epoch times (fine-tuning, image replay, compressed replay)."""
    if a.skip_strategies:
        return None
    import bench_cl_speed

    argv = [*(["--quick"] if a.quick else ["--image-size", str(a.image_size)]),
            *(["--weights", a.weights] if a.weights else [])]
    res = bench_cl_speed.main([*argv, "--out", str(work / "cl_speed.json")])
    # header() inside names this script; say which one measured, with its own arguments.
    return {"command": " ".join(["python benchmarks/bench_cl_speed.py", *argv]), "settings": res["settings"],
            "per_strategy": res["per_strategy"],
            "speedup_compressed_vs_image_replay": res["speedup_compressed_vs_image_replay"]}


def expectations(rows: list[dict], models: dict) -> list[dict]:
    out = []
    by = {(r["key"], r["format"]): r for r in rows if r["supported"]}
    paste, stfpm = by.get(("paste-mcunet", "float torch")), by.get(("stfpm-mcunet", "float torch"))
    if paste and stfpm:
        cut = 1 - paste["p50_ms"] / stfpm["p50_ms"]
        out.append(check("PaSTe-MCUNet float torch faster than STFPM-MCUNet (paper: -25% inference time)",
                         cut > 0,
                         f"{paste['p50_ms']:.2f} vs {stfpm['p50_ms']:.2f} ms p50, {-100 * cut:+.0f}%"))
    if "paste-mcunet" in models and "stfpm-mcunet" in models:
        p, s = models["paste-mcunet"]["train_epoch_s"], models["stfpm-mcunet"]["train_epoch_s"]
        out.append(check("PaSTe-MCUNet trains faster per epoch than STFPM-MCUNet (paper: -33% training time)",
                         p < s, f"{p:.3f} vs {s:.3f} s per epoch, {100 * (p / s - 1):+.0f}%"))
    tfl = by.get(("paste-mcunet", "tflite-int8"))
    if tfl:
        out.append(check("PaSTe-MCUNet tflite-int8 >= 10x faster than STFPM-ResNet18 float torch "
                         "(bench_device's target)",
                         tfl["speedup_vs_base"] >= 10, f"{tfl['speedup_vs_base']:.1f}x"))
    return out


def plot(rows: list[dict], path: Path) -> Path:
    from edgead.plotting import pyplot, save_png

    plt = pyplot()
    ok = [r for r in rows if r["supported"]]
    labels = [f"{r['model'].split(' ')[0]}\n{r['format']}" for r in ok]
    panels = (("p50_ms", "p50 latency, ms (1 thread, log)", True),
              ("peak_rss_mib", "peak resident memory, MiB", False),
              ("file_bytes", "model file(s), MB", False))
    fig, axes = plt.subplots(1, 3, figsize=(6 + 0.9 * len(ok) * 1.5, 4.2))
    colors = {"float torch": "tab:gray", "onnx": "tab:blue", "onnx-int8": "tab:cyan",
              "tflite-int8": "tab:orange"}
    for ax, (k, title, log) in zip(axes, panels, strict=True):
        vals = [r[k] / (1e6 if k == "file_bytes" else 1) for r in ok]
        ax.bar(range(len(ok)), vals, color=[colors.get(r["format"], "tab:green") for r in ok])
        ax.set_xticks(range(len(ok)), labels, rotation=90, fontsize=7)
        ax.set_title(title, fontsize=9)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("models x formats (STFPM-ResNet18 has random weights)", fontsize=9)
    return save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--train", type=int, default=32, help="synthetic training images for the brief training")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs per model (epoch time: median)")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per interpreter format")
    ap.add_argument("--torch-runs", type=int, default=30, help="timed runs per float torch model")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"comma list of {', '.join(FORMATS)}")
    ap.add_argument("--skip-strategies", action="store_true",
                    help="leave out bench_cl_speed's per-strategy epoch times")
    ap.add_argument("--weights", default=None, help="MCUNet-in3 weights (else $EDGEAD_WEIGHTS_DIR / cache)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the runs and artifacts here (default: a temporary folder, removed)")
    ap.add_argument("--out", "--out-dir", dest="out_dir", type=Path, default=RESULTS, help="where speed[_TAG].json/.csv/.png go")
    ap.add_argument("--tag", default="")
    ap.add_argument("--quick", action="store_true",
                    help="64 px, 12 images, 1 epoch, few timed runs (for tests)")
    a = ap.parse_args(argv)
    if a.quick:
        a.image_size, a.train, a.epochs, a.runs, a.torch_runs = 64, 12, 1, 10, 5
        a.tag = a.tag or "quick"
    keys, a.formats = _parse(a.models, MODELS, "models"), _parse(a.formats, FORMATS, "formats")
    # --train: the export calibrates on 8 training images and 10% of them are held out for validation.
    for name, value, low in (("--runs", a.runs, 1), ("--torch-runs", a.torch_runs, 1),
                             ("--epochs", a.epochs, 1), ("--train", a.train, 10)):
        if value < low:
            raise EdgeadError(f"{name} {value}: expected at least {low}")
    if BASELINE[0] not in keys or "torch" not in a.formats:
        raise EdgeadError("--models must include stfpm-resnet18 and --formats torch: every ratio is against "
                          "STFPM-ResNet18 float torch measured in the same run")
    meta = header(argv)
    load_start = os.getloadavg()  # other jobs on the machine slow every timing: record how busy it was
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_speed_"))
    try:
        from edgead.data.synth import generate_dataset

        data = generate_dataset(work / "data", ["nut"], seed=0, image_size=a.image_size, n_train=a.train,
                                n_test=4, overwrite=True)
        models = {}
        for k in keys:
            print(f"{MODELS[k].label}: training {a.epochs} epoch(s) at {a.image_size} px, exporting ...",
                  flush=True)
            models[k] = prepare_model(k, MODELS[k], data, work, a)
        print("measuring each model and format in a fresh single-threaded process ...", flush=True)
        # The baseline first, then the rest back to back, so every ratio compares numbers of one sitting.
        order = [BASELINE[0], *(k for k in keys if k != BASELINE[0])]
        rows = [measure(k, models[k], f, work, a) for k in order for f in a.formats]
        add_ratios(rows)
        strategies = training_per_strategy(a, work)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows, ROW_COLS, digits=2)
    for r in rows:
        if not r["supported"]:
            print(f"not supported: {r['model']} {r['format']}: {r['reason']}")
    checks = expectations(rows, models)
    tag = f"_{a.tag}" if a.tag else ""
    stem = a.out_dir / f"speed{tag}"
    result = {**meta, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "notes": NOTES,
              "models": models, "rows": rows, "training_per_strategy": strategies,
              "load_average": {"start": load_start, "end": os.getloadavg()}, "checks": checks}
    write_json(Path(f"{stem}.json"), result)
    csv_cols = [*ROW_COLS, "runtime", "peak_rss_bytes", "rss_before_load_bytes", "reason"]
    write_csv(Path(f"{stem}.csv"), [{c: r.get(c) for c in csv_cols} for r in rows])
    plot(rows, Path(f"{stem}.png"))
    print(f"wrote {stem}.json, .csv and .png")
    return 0


if __name__ == "__main__":
    run_as_script(main)
