"""Bytes a device writes to its replay buffer: whole-file rewrites (before) vs append mode (after), one run.

    python benchmarks/bench_buffer_writes.py [--frames 1000] [--out benchmarks/results/buffer_writes.json]

Each configuration is a latent shape and a budget; both modes get the same seeded stream of int8 latents (one
task, every frame offered, as `firmware_sim run --buffer --keep all`) through a real buffer file in a
temporary folder (firmware_sim.buffer_wear). The shapes are MCUNet-in3's latent at 64 px (what the tests
export) and at 128 px, and a larger one; the budgets span a few records to a few hundred.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from firmware_sim.atomic import atomic_write_json
from firmware_sim.buffer_wear import measure_writes

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = [((24, 8, 8), "40kB"), ((24, 8, 8), "256kB"), ((48, 16, 16), "256kB"), ((48, 16, 16), "2.46MB")]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000, help="Frames offered per configuration (default 1000).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "buffer_writes.json"))
    a = ap.parse_args(argv)
    rows = []
    for shape, budget in CONFIGS:
        t0 = time.perf_counter()
        before = measure_writes(shape, budget, a.frames, append=False, seed=a.seed)
        after = measure_writes(shape, budget, a.frames, append=True, seed=a.seed)
        rows.append({"shape": list(shape), "budget": budget, "before": before, "after": after,
                     "reduction": round(before["bytes_written"] / max(after["bytes_written"], 1), 1),
                     "after_within_record_plus_64": after["bytes_per_buffered_frame"] <= after["record_bytes"] + 64,
                     "seconds": round(time.perf_counter() - t0, 2)})
        print(f"{shape} {budget}: before {before['bytes_per_1000_frames']:,} B / 1000 frames "
              f"({before['bytes_per_buffered_frame']:,.0f} B per buffered frame), after "
              f"{after['bytes_per_1000_frames']:,} B ({after['bytes_per_buffered_frame']:,.0f} B, record "
              f"{after['record_bytes']:,} B, {after['compactions']} compactions): {rows[-1]['reduction']}x less",
              flush=True)
    result = {"command": " ".join(["python benchmarks/bench_buffer_writes.py", *(argv or sys.argv[1:])]),
              "frames": a.frames, "seed": a.seed, "rows": rows,
              "note": "bytes written after the file's creation; per buffered frame = all those bytes (compactions "
                      "and task-state records included) / frames stored"}
    atomic_write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
