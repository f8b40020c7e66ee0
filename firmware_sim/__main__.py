"""`python -m firmware_sim run | buffer | profile | bundle | calibrate | edgetpu`: the device CLI (argparse only, no click on a
device).

Bad input is a UserError: printed as `error: ...` with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from firmware_sim import __version__, commands
from firmware_sim.decisions import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD
from firmware_sim.errors import UserError
from firmware_sim.sizes import format_size


def json_safe(obj):
    """``obj`` with every non-finite float as None: JSON has no NaN or Infinity, and readers reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _dumps(obj) -> str:
    return json.dumps(json_safe(obj), default=str, allow_nan=False)


def _print(obj) -> None:
    print(_dumps(obj), flush=True)


def parser(prog: str = "python -m firmware_sim") -> argparse.ArgumentParser:
    """The one definition of the device commands (`edgead device` hands its arguments to it)."""
    p = argparse.ArgumentParser(prog=prog, description="edgead on the device: run an exported "
                                "model, keep the int8 replay buffer, profile latency and memory.")
    p.add_argument("--version", action="version", version=f"firmware_sim {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="Score images: one JSON line per image; overlays with --out.")
    r.add_argument("--artifact", required=True, help="Artifact folder (edgead export --out).")
    r.add_argument("--images", required=True, help="An image file or a folder of images.")
    r.add_argument("--out", default=None, help="Folder for one anomaly-map overlay PNG per image.")
    r.add_argument("--map-frame", choices=["image", "model"], default="image",
                   help="Overlays at the input image's size (default) or in the model's square frame.")
    r.add_argument("--format", default=None, help="tflite-int8 | onnx-int8 | onnx | openvino-int8 | openvino "
                   "(default: the first exported).")
    r.add_argument("--threads", type=int, default=None, help="Interpreter threads (default: the interpreter's).")
    r.add_argument("--delegate", choices=["edgetpu"], default=None,
                   help="edgetpu: run the Edge TPU-compiled graphs on a Coral (needs libedgetpu1-std).")
    r.add_argument("--no-xnnpack", action="store_true", help="TFLite: built-in kernels without XNNPACK.")
    r.add_argument("--buffer", default=None, help="Replay buffer file to keep the int8 trunk latents in.")
    r.add_argument("--budget", default=None, help="Buffer budget, e.g. 256KB (needed to create a buffer file).")
    r.add_argument("--task", default=None, help="Product of these images, by name: a task of the artifact "
                   "decides with that task's own threshold; with --buffer its frames are kept under that name (a "
                   "name the artifact does not know is a new product: task-agnostic threshold, new buffer task). "
                   "Names win over numbers; digits that name no task are a buffer task id. Default: the "
                   "task-agnostic threshold (the max over the tasks' thresholds) and the newest task in the "
                   "buffer, else 0.")
    r.add_argument("--keep", default="normal", help="Frames kept in --buffer: normal (default; only frames decided "
                   "normal: the host replays the buffer as normal data), all, or margin:X (only frames scoring "
                   "below X times the threshold, 0 < X <= 1). The summary counts the frames left out and why.")
    r.add_argument("--task-id", type=int, default=None, help="Buffer task id to keep frames under (instead of "
                   "--task; the task-agnostic threshold).")
    r.add_argument("--wait", action="store_true", help="If another process has the buffer, wait for it instead "
                   "of failing.")
    r.add_argument("--shrink", action="store_true", help="Allow a --budget below the buffer file's: records that "
                   "no longer fit are deleted (counted in the summary).")

    b = sub.add_parser("buffer", help="Inspect, export or import a replay buffer file.")
    bsub = b.add_subparsers(dest="action", required=True)
    s = bsub.add_parser("stats", help="JSON: the buffer's statistics and its load report.",
                        description="Print the buffer's records, bytes, tasks and load report (damaged records "
                                    "dropped) as JSON.")
    s.add_argument("file", help="Replay buffer file (.edgeadrb).")
    e = bsub.add_parser("export", help="Validate and copy a buffer for the host.",
                        description="Write a clean copy of FILE to DEST (damaged records dropped) for the host's "
                                    "`edgead train --device-buffer`.")
    e.add_argument("file", help="The device's replay buffer file.")
    e.add_argument("dest", help="Where to write the copy for the host.")
    e.add_argument("--shrink", action="store_true", help="Allow evicting records that do not fit FILE's own budget "
                   "(a damaged file or another tool's); without it such a file is refused.")
    i = bsub.add_parser("import", help="Merge a buffer file into FILE, or replace FILE with it.",
                        description="merge: offer SRC's records to FILE's buffer task by task within FILE's budget; "
                                    "replace: FILE becomes SRC (re-fitted to --budget if given).")
    i.add_argument("src", help="Buffer file to import (e.g. from the host).")
    i.add_argument("file", help="The device's buffer file (created if missing).")
    i.add_argument("--mode", choices=["merge", "replace"], default="merge", help="merge (default) or replace.")
    i.add_argument("--budget", default=None, help="Budget of the result, e.g. 256KB (default: FILE's own).")
    i.add_argument("--shrink", action="store_true", help="Allow a --budget that deletes records.")
    i.add_argument("--wait", action="store_true", help="Wait if another process has FILE.")

    f = sub.add_parser("profile", help="Latency (p50/p95/p99), RAM and flash; fit to device profiles.")
    f.add_argument("--artifact", required=True, help="Artifact folder (edgead export --out).")
    f.add_argument("--profile", action="append", default=None, help="Profile name (repeatable; default: all).")
    f.add_argument("--profiles", default=None, help="Extra profiles JSON file (same format as profiles.json).")
    f.add_argument("--budget", default=None, help="Replay buffer budget to count in flash, e.g. 2.46MB.")
    f.add_argument("--runs", type=int, default=50, help="Timed inferences (default 50).")
    f.add_argument("--warmup", type=int, default=5, help="Untimed inferences first (default 5).")
    f.add_argument("--threads", type=int, default=None, help="Interpreter threads (default: the interpreter's).")
    f.add_argument("--format", default=None, help="Format to profile (default: the first exported).")
    f.add_argument("--delegate", choices=["edgetpu"], default=None,
                   help="edgetpu: profile the Edge TPU-compiled graphs on a Coral.")
    f.add_argument("--no-xnnpack", action="store_true", help="TFLite: built-in kernels without XNNPACK.")
    f.add_argument("--no-compare", action="store_true", help="Do not time the other exported formats (by default "
                   "every format is timed here and the fastest recommended).")
    f.add_argument("--json", action="store_true", help="Print JSON (otherwise a short text summary).")

    d = sub.add_parser("bundle", help="Write a folder and a .tar.gz to copy to a device: firmware_sim, the "
                       "artifact, requirements-device.txt and a README.",
                       description="Package ART for a Raspberry Pi / Coral: OUT/firmware_sim, OUT/artifact (only the "
                                   "formats asked for, manifest re-verified), OUT/requirements-device.txt, "
                                   "OUT/README.md, and OUT.tar.gz beside the folder.")
    d.add_argument("artifact", help="Artifact folder (edgead export --out).")
    d.add_argument("out", help="Bundle folder to write (OUT.tar.gz is written beside it).")
    d.add_argument("--format", default=None, help="Comma-separated formats to keep (default: all in ART; "
                   "edgetpu = tflite-int8 with its compiled graphs).")
    d.add_argument("--no-archive", action="store_true", help="Write the folder only, no .tar.gz.")
    d.add_argument("--force", action="store_true", help="Replace an existing OUT and OUT.tar.gz.")

    c = sub.add_parser("calibrate", help="Set a product's threshold from a few labelled images (manifest "
                       "rewritten, the old threshold kept in its history).",
                       description="Score the good (--normal) and defective (--defect) images with ART's model, set "
                                   "the threshold of --task NAME and rewrite ART's manifest atomically. anchored "
                                   "(default): the stored threshold moved toward the lognormal cut by k/(k+2) of the "
                                   "way with k defects; lognormal: midpoint of "
                                   "the mean log scores, the good ones pooled with the stored held-out normals; "
                                   "best-cut: the best balanced accuracy on these images.")
    c.add_argument("--artifact", required=True, help="Artifact folder (edgead export --out).")
    c.add_argument("--task", default=None, help="The product (a task name of ART); needed when ART has per-task "
                   "thresholds.")
    c.add_argument("--normal", required=True, help="Folder of good images of the product.")
    c.add_argument("--defect", required=True, help="Folder of defective images of the product.")
    c.add_argument("--method", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION_METHOD,
                   help=f"How the threshold is chosen (default {DEFAULT_CALIBRATION_METHOD}; docs/thresholds.md).")
    c.add_argument("--format", default=None, help="Format that scores the images (default: the first exported).")
    c.add_argument("--threads", type=int, default=None, help="Interpreter threads (default: the interpreter's).")

    t = sub.add_parser("edgetpu", help="Compile ART's tflite-int8 graphs for the Coral Edge TPU (or record ones "
                       "compiled by hand) in its manifest.",
                       description="With edgetpu_compiler on PATH: compile the tflite-int8 graphs and record each "
                                   "<name>_edgetpu.tflite beside its original in the manifest. Without it: record "
                                   "*_edgetpu.tflite files already copied into ART, or say how to compile by hand.")
    t.add_argument("artifact", help="Artifact folder with a tflite-int8 format.")
    t.add_argument("--no-compile", action="store_true", help="Only record compiled files already in ART.")
    return p


def _size(n) -> str:
    return "n/a" if n is None else format_size(n)


def print_profile(res: dict) -> None:
    lat, ram, flash = res["latency_ms"], res["ram"], res["flash"]
    print(f"{res['format']} ({res['path']}) via {res['interpreter']}: p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} "
          f"ms, p99 {lat['p99']:.2f} ms over {lat['runs']} runs")
    print(f"RAM: peak RSS {_size(ram['peak_rss_bytes'])}, interpreter tensors "
          f"{_size(ram['interpreter_arena_bytes'])}, int8 peak activation "
          f"{_size(ram['analytic_peak_activation_int8_bytes'])}")
    print(f"flash: {_size(flash['total_bytes'])} (models {_size(sum(flash['model_files'].values()))}, manifest "
          f"{_size(flash['manifest_bytes'])}, buffer budget {_size(flash['buffer_budget_bytes'])})")
    w = res.get("buffer_writes")
    if w and "error" in w:
        print(f"buffer writes: not measured ({w['error']})")
    elif w:
        print(f"buffer writes: {_size(w['bytes_per_1000_frames'])} per 1,000 frames offered ({w['buffered']} "
              f"buffered, {w['bytes_per_buffered_frame']:.0f} B each for {w['record_bytes']:,} B records; "
              f"{w['compactions']} compactions)")
    for row in res["profiles"]:
        print(f"  {row['profile']:<16} {'fits' if row['fits'] else 'DOES NOT FIT':<13} RAM headroom "
              f"{_size(row['ram_headroom'])} ({row['ram_basis']}), flash headroom {_size(row['flash_headroom'])}")
    cmp = res.get("format_comparison")
    if cmp and cmp["recommended"]:
        timed = [f"{f} {r['p50_ms']:.2f} ms" for f, r in cmp["formats"].items() if r["available"]]
        absent = [f"{f} (cannot load here)" for f, r in cmp["formats"].items() if not r["available"]]
        print(f"fastest format here: {cmp['recommended']} (median per image, measured now over {cmp['runs']} "
              f"interleaved runs: {', '.join(timed + absent)}); use --format {cmp['recommended']}")
    elif cmp:
        print("no exported format could be timed here: " + "; ".join(r["reason"] for r in cmp["formats"].values()))


def main(argv: list[str] | None = None, prog: str = "python -m firmware_sim") -> int:
    """Run one device command; returns the exit status (2 for bad input, printed as `error: ...`)."""
    args = parser(prog).parse_args(argv)
    try:
        if args.cmd == "run":
            summary = commands.run(args.artifact, args.images, args.out, args.threads, args.delegate, args.buffer,
                                   args.budget, args.task, args.format, emit=_print,
                                   xnnpack=not args.no_xnnpack, shrink=args.shrink, wait=args.wait,
                                   task_id=args.task_id, map_frame=args.map_frame,
                                   keep=args.keep)
            print(_dumps({"summary": summary}), file=sys.stderr, flush=True)
        elif args.cmd == "buffer":
            if args.action == "stats":
                _print(commands.buffer_stats(args.file))
            elif args.action == "export":
                _print(commands.buffer_export(args.file, args.dest, shrink=args.shrink))
            else:
                _print(commands.buffer_import(args.src, args.file, args.mode, args.budget, args.shrink, args.wait))
        elif args.cmd == "profile":
            res = commands.profile(args.artifact, args.profile, args.profiles, args.budget, args.runs, args.warmup,
                                   args.threads, args.format, args.delegate, xnnpack=not args.no_xnnpack,
                                   compare=not args.no_compare)
            _print(res) if args.json else print_profile(res)
        elif args.cmd == "bundle":
            from firmware_sim.bundle import make_bundle

            _print(make_bundle(args.artifact, args.out, args.format, archive=not args.no_archive, force=args.force))
        elif args.cmd == "calibrate":
            from firmware_sim.calibrate import calibrate

            _print(calibrate(args.artifact, args.normal, args.defect, args.task, args.method, args.format,
                             args.threads))
        elif args.cmd == "edgetpu":
            from firmware_sim.edgetpu import add_edgetpu

            _print(add_edgetpu(args.artifact, run_compiler=not args.no_compile,
                               log=lambda m: print(m, file=sys.stderr, flush=True)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a read-only folder (--out, --buffer): say which file
        where = e.filename if e.filename is not None else "a file"
        print(f"error: {where}: {e.strerror or e} (check that the folder exists, is writable and has free space)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
