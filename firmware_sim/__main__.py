"""`python -m firmware_sim run | buffer | profile`: the device CLI (argparse only, no click on a device).

Bad input is a UserError: printed as `error: ...` with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from firmware_sim import commands
from firmware_sim.errors import UserError


def _print(obj) -> None:
    print(json.dumps(obj, default=str), flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m firmware_sim", description="edgead on the device: run an exported "
                                "model, keep the int8 replay buffer, profile latency and memory.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="Score images: one JSON line per image; overlays with --out.")
    r.add_argument("--artifact", required=True, help="Artifact folder (edgead export --out).")
    r.add_argument("--images", required=True, help="An image file or a folder of images.")
    r.add_argument("--out", default=None, help="Folder for one anomaly-map overlay PNG per image.")
    r.add_argument("--format", default=None, help="tflite-int8 | onnx-int8 | onnx (default: the first exported).")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--delegate", choices=["edgetpu"], default=None)
    r.add_argument("--no-xnnpack", action="store_true", help="TFLite: built-in kernels without XNNPACK.")
    r.add_argument("--buffer", default=None, help="Replay buffer file to keep the int8 trunk latents in.")
    r.add_argument("--budget", default=None, help="Buffer budget, e.g. 256KB (needed to create a buffer file).")
    r.add_argument("--task", default=None, help="Task of these images: a task NAME of the artifact decides with "
                   "that task's own threshold (and keeps buffer records under its index); an integer is a buffer "
                   "task id. Default: the task-agnostic threshold (the max over the tasks' thresholds) and the "
                   "newest task in the buffer, else 0.")

    b = sub.add_parser("buffer", help="Inspect, export or import a replay buffer file.")
    bsub = b.add_subparsers(dest="action", required=True)
    s = bsub.add_parser("stats", help="JSON: the buffer's statistics and its load report.")
    s.add_argument("file")
    e = bsub.add_parser("export", help="Validate and copy a buffer for the host.")
    e.add_argument("file")
    e.add_argument("dest")
    i = bsub.add_parser("import", help="Merge a buffer file into FILE, or replace FILE with it.")
    i.add_argument("src")
    i.add_argument("file")
    i.add_argument("--mode", choices=["merge", "replace"], default="merge")
    i.add_argument("--budget", default=None)

    f = sub.add_parser("profile", help="Latency (p50/p95/p99), RAM and flash; fit to device profiles.")
    f.add_argument("--artifact", required=True)
    f.add_argument("--profile", action="append", default=None, help="Profile name (repeatable; default: all).")
    f.add_argument("--profiles", default=None, help="Extra profiles JSON file (same format as profiles.json).")
    f.add_argument("--budget", default=None, help="Replay buffer budget to count in flash, e.g. 2.46MB.")
    f.add_argument("--runs", type=int, default=50)
    f.add_argument("--warmup", type=int, default=5)
    f.add_argument("--threads", type=int, default=None)
    f.add_argument("--format", default=None)
    f.add_argument("--delegate", choices=["edgetpu"], default=None)
    f.add_argument("--no-xnnpack", action="store_true", help="TFLite: built-in kernels without XNNPACK.")
    f.add_argument("--json", action="store_true", help="Print JSON (otherwise a short text summary).")
    return p


def _profile_text(res: dict) -> None:
    lat, ram, flash = res["latency_ms"], res["ram"], res["flash"]
    print(f"{res['format']} ({res['path']}) via {res['interpreter']}: p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} "
          f"ms, p99 {lat['p99']:.2f} ms over {lat['runs']} runs")
    print(f"RAM: peak RSS {ram['peak_rss_bytes']:,} B, arena {ram['interpreter_arena_bytes']}, int8 peak "
          f"activation {ram['analytic_peak_activation_int8_bytes']}; flash {flash['total_bytes']:,} B")
    for row in res["profiles"]:
        print(f"  {row['profile']:<16} {'fits' if row['fits'] else 'DOES NOT FIT':<13} RAM headroom "
              f"{row['ram_headroom']:,} B ({row['ram_basis']}), flash headroom {row['flash_headroom']:,} B")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd == "run":
            summary = commands.run(args.artifact, args.images, args.out, args.threads, args.delegate, args.buffer,
                                   args.budget, args.task, args.format, emit=_print,
                                   xnnpack=not args.no_xnnpack)
            print(json.dumps({"summary": summary}, default=str), file=sys.stderr, flush=True)
        elif args.cmd == "buffer":
            if args.action == "stats":
                _print(commands.buffer_stats(args.file))
            elif args.action == "export":
                _print(commands.buffer_export(args.file, args.dest))
            else:
                _print(commands.buffer_import(args.src, args.file, args.mode, args.budget))
        else:
            res = commands.profile(args.artifact, args.profile, args.profiles, args.budget, args.runs, args.warmup,
                                   args.threads, args.format, args.delegate, xnnpack=not args.no_xnnpack)
            _print(res) if args.json else _profile_text(res)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
