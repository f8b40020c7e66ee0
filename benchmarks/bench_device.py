"""The device runtime: resident-memory growth over many inferences, and latency of every format side by side.

1. Memory: a fresh interpreter that imports firmware_sim only (as a device) runs N inferences of PaSTe-MCUNet
   tflite-int8 with the int8 replay buffer attached; resident memory (/proc/self/statm) after a warm-up and
   after the N runs. Target: growth < 2 MB.
2. Latency, one run, one thread each, same frames: p50 of PaSTe-MCUNet as tflite-int8, onnx-int8 and onnx
   (firmware_sim.Device: preprocessing + graphs + distance) and as float torch (model.predict), and of
   STFPM-ResNet18 in float torch. Targets: tflite-int8 PaSTe >= 3x faster than float torch PaSTe and >= 10x
   faster than float torch STFPM-ResNet18. STFPM-ResNet18 uses random weights (no ResNet18 file offline;
   latency does not depend on the values); PaSTe uses the MCUNet-in3 ImageNet weights, trained 1 epoch.
Writes benchmarks/results/device.json.

    python benchmarks/bench_device.py [--image-size 256] [--n 5000] [--runs 100] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import check, header, out_json, print_table, run_as_script, write_json
from latency import export_artifact, p50_ms, random_frames, torch_predict, train_run

ROOT = Path(__file__).resolve().parents[1]
MEMORY_TARGET = 2 * 10**6
SPEEDUP_PASTE, SPEEDUP_STFPM = 3.0, 10.0

_MEMORY_SCRIPT = """
import json, os, sys, time
import numpy as np
from firmware_sim.device import Device
art, n, buf = sys.argv[1], int(sys.argv[2]), sys.argv[3]
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
rng = np.random.default_rng(0)
d = Device(art, threads=1)
d.attach_buffer(buf, "64KB", task=0)
s = d.manifest.image_size
frames = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(16)]
for i in range(50):
    d.infer(frames[i % 16])
start = rss()
t0 = time.perf_counter()
for i in range(n):
    d.infer(frames[i % 16])
wall = time.perf_counter() - t0
end = rss()
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "edgead", "export"))
print(json.dumps({"n": n, "rss_after_warmup": start, "rss_end": end, "growth": end - start,
                  "seconds": wall, "buffer": d.buffer.stats()["records"], "host_modules": bad}))
"""


def make_artifact(work: Path, size: int, weights: str | None) -> Path:
    from edgead.data.synth import generate_dataset
    from edgead.models.teacher_student import DetectorConfig

    data = generate_dataset(work / "data", ["nut"], seed=0, image_size=size, n_train=16, n_test=4)
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=size)
    train_run(data, "nut", det, work / "run", weights=weights)
    return export_artifact(work / "run", work / "art", ["tflite-int8", "onnx-int8", "onnx"])


def memory_growth(art: Path, n: int, work: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(art), str(n), str(work / "buffer.bin")],
                       capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"memory run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def latencies(art: Path, size: int, runs: int, torch_runs: int, weights: str | None) -> list[dict]:
    import torch
    from edgead.export.pipeline import load_run

    from edgead.models.teacher_student import DetectorConfig, TeacherStudent
    from firmware_sim.device import Device
    from firmware_sim.manifest import load_manifest

    torch.set_num_threads(1)
    frames = random_frames(size)
    rows = []
    for fmt, xnn in (("tflite-int8", True), ("tflite-int8", False), ("onnx-int8", True), ("onnx", True)):
        d = Device(art, format=fmt, threads=1, xnnpack=xnn)
        rows.append({"model": "PaSTe-MCUNet", "format": fmt + ("" if xnn else " (no XNNPACK)"),
                     "runtime": d.interpreter, "p50_ms": p50_ms(d.infer, frames, runs)})
    run = load_run(load_manifest(art).data["source"]["run"], None)
    pre = run.pre

    rows.append({"model": "PaSTe-MCUNet", "format": "float torch", "runtime": f"torch {torch.__version__}",
                 "p50_ms": p50_ms(torch_predict(run.model.eval(), pre), frames, torch_runs)})
    det = DetectorConfig.defaults("stfpm", "resnet18", image_size=size, pretrained=False)
    stfpm = TeacherStudent(det, download=False).eval()
    rows.append({"model": "STFPM-ResNet18 (random weights)", "format": "float torch",
                 "runtime": f"torch {torch.__version__}",
                 "p50_ms": p50_ms(torch_predict(stfpm, pre), frames, torch_runs)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--n", type=int, default=5000, help="inferences for the memory-growth run")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per interpreter format")
    ap.add_argument("--torch-runs", type=int, default=20, help="timed runs per float torch model")
    ap.add_argument("--art", type=Path, default=None, help="reuse an artifact folder (else train + export one)")
    ap.add_argument("--weights", default=None, help="MCUNet-in3 weights (else $EDGEAD_WEIGHTS_DIR / cache)")
    ap.add_argument("--quick", action="store_true", help="200 inferences at 128 px, fewer timed runs (< 60 s)")
    ap.add_argument("--out", type=Path, default=None, help="folder or .json file (default benchmarks/results/device.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.image_size, args.n, args.runs, args.torch_runs = 128, 200, 30, 5
    with tempfile.TemporaryDirectory(prefix="bench_device_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        art = args.art or make_artifact(work, args.image_size, args.weights)
        print(f"artifact ready ({time.perf_counter() - t0:.0f} s); {args.n} inferences in a firmware_sim-only "
              "process ...", flush=True)
        mem = memory_growth(art, args.n, work)
        print(f"resident memory {mem['rss_after_warmup'] / 2**20:.1f} MiB after warm-up, growth "
              f"{mem['growth'] / 1e6:+.3f} MB over {mem['n']} inferences ({mem['seconds']:.1f} s)", flush=True)
        rows = latencies(art, args.image_size, args.runs, args.torch_runs, args.weights)
    base = min(rows[0]["p50_ms"], rows[1]["p50_ms"])  # the faster TFLite kernel set on this machine
    for r in rows:
        r["p50_vs_tflite_int8"] = r["p50_ms"] / base  # > 1: slower than the faster tflite-int8 row
    print_table(rows, ["model", "format", "runtime", "p50_ms", "p50_vs_tflite_int8"], digits=2)
    paste_torch = next(r for r in rows if r["model"] == "PaSTe-MCUNet" and r["format"] == "float torch")
    stfpm = rows[-1]
    checks = [
        check("memory growth", mem["growth"] < MEMORY_TARGET and not mem["host_modules"],
              f"{mem['growth']:,} B over {mem['n']} inferences (target < {MEMORY_TARGET:,} B); host modules "
              f"imported: {mem['host_modules']}"),
        check("tflite-int8 vs float torch PaSTe", paste_torch["p50_vs_tflite_int8"] >= SPEEDUP_PASTE,
              f"{paste_torch['p50_vs_tflite_int8']:.1f}x (target >= {SPEEDUP_PASTE}x)"),
        check("tflite-int8 PaSTe vs float torch STFPM-ResNet18", stfpm["p50_vs_tflite_int8"] >= SPEEDUP_STFPM,
              f"{stfpm['p50_vs_tflite_int8']:.1f}x (target >= {SPEEDUP_STFPM}x)"),
    ]
    result = {**header(argv), "settings": {"image_size": args.image_size, "n": args.n, "runs": args.runs,
                                           "torch_runs": args.torch_runs, "threads": 1, "quick": args.quick,
                                           "note": "STFPM-ResNet18 has random weights (latency only); latency = "
                                                   "preprocessing + graphs + numpy distance per frame"},
              "memory": mem, "latency": rows, "checks": checks}
    if not args.quick or args.out:
        write_json(out_json(args.out, "device.json"), result)
    return result


if __name__ == "__main__":
    run_as_script(main)
