"""Time per epoch of compressed replay vs image replay vs fine-tuning, side by side in one run.

Same data, same detector (PaSTe-MCUNet), same seed; a two-task stream so the second task trains with a
replay memory. Compressed replay never runs the frozen trunk (nor the frozen teacher) for stored samples:
their latents are decoded and their teacher features computed once per task. Image replay pushes every
replayed image through trunk and teacher tail on each draw. Target: compressed >= 1.3x faster per epoch
than image replay. The three strategies run `--repeats` times in rotating order (run-to-run noise on a small
machine is about +-10%); the ratio reported is the median of the per-round ratios, with its range.
Writes benchmarks/results/cl_speed.json.

    python benchmarks/bench_cl_speed.py [--image-size 256] [--train 40] [--epochs 3] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchkit import header, out_json, run_as_script, write_json

TARGET = 1.3


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--train", type=int, default=40, help="training images per task")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--memory-size", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the three strategies (median ratio)")
    ap.add_argument("--weights", default=None, help="MCUNet-in3 weights (else $EDGEAD_WEIGHTS_DIR / cache)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    ap.add_argument("--out", type=Path, default=None, help="folder or .json file (default benchmarks/results/cl_speed.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.image_size, args.train, args.epochs, args.memory_size, args.repeats = 64, 8, 1, 8, 1

    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data import TaskStream
    from edgead.data.synth import generate_dataset
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    with tempfile.TemporaryDirectory(prefix="edgead-clspeed-") as td:  # nothing left behind in /tmp
        work = Path(td)
        generate_dataset(work / "data", ("nut", "brick"), seed=0, image_size=args.image_size, n_train=args.train,
                         n_test=4)
        stream = TaskStream(work / "data", ["nut", "brick"])
        det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=args.image_size)
        cfg = TrainConfig(epochs=args.epochs, seed=0, progress=False, select_every=0)
        runs = {
            "finetune": dict(strategy="finetune"),
            "replay": dict(strategy="replay", memory_size=args.memory_size),
            "compressed-replay": dict(strategy="compressed-replay", codec="int8-channel", memory_size=args.memory_size),
        }
        rounds: list[dict] = []
        names = list(runs)
        for k in range(max(args.repeats, 1)):
            rows = {}
            for name in names[k % 3:] + names[:k % 3]:  # rotate so no strategy always runs first
                res = run_stream(stream, det, cfg, ReplayConfig(**runs[name]), work / f"{name}_{k}",
                                 weights=args.weights, log=lambda m: None)
                second = res["timings"]["per_task"][1]
                rows[name] = {"epoch_seconds_task2": float(np.median(second["epoch_seconds"])),
                              "prepare_seconds_task2": second["prepare_seconds"],
                              "replay_per_batch": second["replay_per_batch"],
                              "additional_bytes": res["memory"]["additional_bytes"]}
            rounds.append(rows)
    ratios = [r["replay"]["epoch_seconds_task2"] / r["compressed-replay"]["epoch_seconds_task2"] for r in rounds]
    rows = {name: {**rounds[0][name], "epoch_seconds_task2": float(np.median(
        [r[name]["epoch_seconds_task2"] for r in rounds]))} for name in names}
    ratio = float(np.median(ratios))
    out = {
        **header(argv),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "per_strategy": rows,
        "speedup_compressed_vs_image_replay": ratio,
        "speedup_per_round": ratios,
        "target": TARGET,
        "pass": ratio >= TARGET,
    }
    print(f"{'strategy':<20} {'s/epoch (task 2)':>17} {'prepare s':>10} {'replayed/batch':>15} {'memory B':>12}")
    for name, r in rows.items():
        print(f"{name:<20} {r['epoch_seconds_task2']:>17.3f} {r['prepare_seconds_task2']:>10.2f} "
              f"{r['replay_per_batch']:>15} {r['additional_bytes']:>12,}")
    print(f"compressed replay is {ratio:.2f}x faster per epoch than image replay (median of {len(ratios)} rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}) "
          f"(target >= {TARGET}x): {'PASS' if out['pass'] else 'FAIL'}")
    path = out_json(args.out, "cl_speed_quick.json" if args.quick else "cl_speed.json")
    write_json(path, out)
    return out


if __name__ == "__main__":
    run_as_script(main)
