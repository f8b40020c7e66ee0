"""Time and memory of the pixel metrics on one task's worth of anomaly maps.

    python benchmarks/bench_metrics.py                # 100 maps of 256x256 (6.5M pixels), 3 repeats
    python benchmarks/bench_metrics.py --quick        # 10 maps of 128x128, 1 repeat (smoke test)
    python benchmarks/bench_metrics.py --sklearn      # also time scikit-learn on the same pixels

Time: best and mean wall-clock seconds over the repeats. Memory: peak bytes allocated during one call
above what was allocated before it, traced with tracemalloc (numpy reports its buffers to it), given
as a multiple of the bytes of the float32 maps array. Writes benchmarks/results/metrics.json
(metrics_quick.json with --quick) atomically. The chunk buffers of the streaming pass are a fixed ~10 MiB,
so on small inputs (--quick) the multiple is large; on a full task it approaches 2x (the sort keys).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchkit import out_json, run_as_script
from edgead.metrics import aupro, evaluate_all, pixel_ap, pixel_auroc, pixel_f1_max, pixel_metrics
from firmware_sim.atomic import atomic_write_json


def make_task(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Half the images get 1-3 elliptic defects; maps = smooth noise + a blurred bump on the defects."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    maps = np.empty((n, size, size), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        if i % 2:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.integers(2, max(3, size // 8), 2)
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        noise = ndimage.gaussian_filter(rng.random((size, size)), 2.0)
        bump = ndimage.gaussian_filter(masks[i].astype(np.float64), 3.0) * rng.uniform(0.0, 0.3)
        maps[i] = noise + bump
    labels = masks.any(axis=(1, 2))
    scores = maps.reshape(n, -1).max(axis=1)
    return masks, maps, labels, scores


def measure(fn, repeats: int) -> dict:
    times = []
    value = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return {"best_s": min(times), "mean_s": sum(times) / len(times), "peak_extra_bytes": peak, "value": value}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="number of maps (default 100, 10 with --quick)")
    p.add_argument(
        "--size", type=int, default=None, help="map side in pixels (default 256, 128 with --quick)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed calls per metric (default 3, 1 with --quick)"
    )
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument(
        "--sklearn", action="store_true", help="also time sklearn roc_auc_score / average_precision"
    )
    p.add_argument("--out", type=Path, default=None, help="folder or .json file (default benchmarks/results/metrics.json)")
    args = p.parse_args(argv)
    n = args.n or (10 if args.quick else 100)
    size = args.size or (128 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    out = out_json(args.out, "metrics_quick.json" if args.quick else "metrics.json")

    masks, maps, labels, scores = make_task(n, size)
    maps_bytes = maps.nbytes
    cases = {
        "pixel_auroc": lambda: pixel_auroc(masks, maps),
        "pixel_ap": lambda: pixel_ap(masks, maps),
        "pixel_f1_max": lambda: pixel_f1_max(masks, maps),
        "aupro": lambda: aupro(masks, maps),
        "pixel_metrics (4 metrics, 1 sort)": lambda: pixel_metrics(masks, maps),
        "evaluate_all": lambda: evaluate_all(labels, scores, masks, maps),
    }
    if args.sklearn:
        from sklearn.metrics import average_precision_score, roc_auc_score

        cases["sklearn roc_auc_score"] = lambda: roc_auc_score(masks.ravel(), maps.ravel())
        cases["sklearn average_precision_score"] = lambda: average_precision_score(
            masks.ravel(), maps.ravel()
        )

    rows = []
    print(
        f"{n} maps of {size}x{size} = {masks.size:,} pixels; maps array {maps_bytes / 2**20:.1f} MiB (float32)"
    )
    print(f"{'metric':36s} {'best s':>8s} {'mean s':>8s} {'peak extra':>11s} {'x maps':>7s}  value")
    for name, fn in cases.items():
        r = measure(fn, repeats)
        r["memory_multiple_of_maps"] = r["peak_extra_bytes"] / maps_bytes
        value = r["value"]
        shown = f"{value:.4f}" if isinstance(value, float) else ", ".join(f"{v:.3f}" for v in value.values())
        print(
            f"{name:36s} {r['best_s']:8.3f} {r['mean_s']:8.3f} {r['peak_extra_bytes'] / 2**20:8.1f} MiB"
            f" {r['memory_multiple_of_maps']:6.2f}x  {shown}"
        )
        rows.append({"metric": name, **r})

    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "data": {
            "n": n,
            "size": size,
            "pixels": int(masks.size),
            "maps_bytes": int(maps_bytes),
            "repeats": repeats,
        },
        "memory_method": "tracemalloc peak during one call minus traced bytes before it, / maps.nbytes",
        "results": rows,
    }
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_as_script(main)
