"""How small can the int8 TFLite PaSTe trunk + head be without losing fidelity? A measurement, kept so it can
be repeated (issue #5: trunk + head at most 0.6 MB, image AUROC within -0.02 and pixel AUROC within -0.01 of
the float model).

On one run, with the export's own calibration images and held-out test images, every variant of weight
granularity (per-channel, per-tensor, mixed: per-tensor 1x1 convs only) and serialisation (the converter's
bytes, or edgead.export.tflite_size.compact_tflite) is exported with edgead.export.formats.export_tflite, then measured:
bytes per graph, the byte breakdown of trunk + head, and image / pixel AUROC of the trunk -> head path
against the float torch model (edgead.export.fidelity). Compacting is checked to change no output bit.

    python benchmarks/study_size.py RUN_DIR [--task N] [--calibration 32] [--out study.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from edgead.export.fidelity import Tolerance, compare
from edgead.export.formats import export_tflite
from edgead.export.pipeline import load_data, load_run, reference, select_calibration
from edgead.export.tflite_size import tflite_size_breakdown

from firmware_sim.atomic import atomic_write_json

# (weight granularity, compact serialisation); the first is what the converter alone gives.
VARIANTS = (("per-channel", False), ("per-channel", True), ("per-tensor", False), ("per-tensor", True),
            ("mixed", True))


def _sum(parts: list[dict[str, int]]) -> dict[str, int]:
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def run_study(run_dir: str, task: int | None, n_calib: int) -> dict:
    run = load_run(run_dir, task)
    model, pre = run.model, run.pre
    pool, test, tasks = load_data(run, None)
    calib = select_calibration(pool, n_calib, int(run.results["config"]["train"]["seed"]))
    ref = reference(model, pre, test)
    tol = Tolerance()
    out = {"run": str(Path(run_dir).resolve()), "tasks": tasks, "test_images": len(test),
           "calibration_images": len(calib), "tolerance": {"image_auroc": tol.image_auroc,
                                                           "pixel_auroc": tol.pixel_auroc},
           "bar_bytes": 600_000, "variants": []}
    preds = {}
    for granularity, compact in VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            fx = export_tflite(model, pre, calib, Path(tmp), "int8", granularity, compact)
            files = {g: (Path(tmp) / e["file"]).read_bytes() for g, e in fx.graphs.items()}
            pred = fx.detector(model).predict(test.images, "trunk+head")
        if not compact:
            preds[(granularity, compact)] = pred
        fid = compare(test, ref, pred, tol)
        row = {"weights": granularity, "serialisation": "compact" if compact else "converter",
               "bytes": {**{g: len(b) for g, b in files.items()},
                         "trunk+head": len(files["trunk"]) + len(files["head"])},
               "breakdown_trunk+head": _sum([tflite_size_breakdown(files[g]) for g in ("trunk", "head")]),
               **{k: fid[k] for k in ("image_auroc", "pixel_auroc", "map_cosine_mean", "within_tolerance")}}
        twin = preds.get((granularity, False))
        if compact and twin is not None:
            row["outputs_identical_to_converter_bytes"] = bool(
                np.array_equal(twin.maps, pred.maps) and np.array_equal(twin.latents, pred.latents))
        out["variants"].append(row)
    return out


def _table(study: dict) -> str:
    lines = [f"{'weights':12} {'bytes':10} {'trunk+head':>11} {'img AUROC d':>12} {'pix AUROC d':>12}  ok"]
    for v in study["variants"]:
        ok = v["within_tolerance"] and v["bytes"]["trunk+head"] <= study["bar_bytes"]
        lines.append(f"{v['weights']:12} {v['serialisation']:10} {v['bytes']['trunk+head']:>11,} "
                     f"{v['image_auroc']['delta']:>+12.4f} {v['pixel_auroc']['delta']:>+12.4f}  "
                     f"{'yes' if ok else 'no'}")
    return "\n".join(lines)


def main() -> None:
    from edgead.export.pipeline import ExportOptions

    from edgead.options import add_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--task", type=int, default=None)
    add_arguments(ap, ExportOptions, "calibration")  # edgead export's own definition
    ap.add_argument("--out", type=Path, default=None, help="write the full results here (JSON)")
    a = ap.parse_args()
    study = run_study(a.run_dir, a.task, a.calibration)
    # Like every results file: what produced it, when, where.
    study = {"command": "python benchmarks/study_size.py " + " ".join(sys.argv[1:]),
             "date": datetime.now(UTC).isoformat(timespec="seconds"),
             "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}, **study}
    if a.out:
        atomic_write_json(a.out, study)
    else:
        print(json.dumps(study, indent=2))
    print(_table(study))


if __name__ == "__main__":
    main()
