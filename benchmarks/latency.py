"""Shared pieces of the latency benchmarks (bench_device, bench_speed): frames, timing, quick runs and
artifacts, and a one-format measurement in a fresh process.

Run as a script, this file is that fresh process: ``python benchmarks/latency.py SPEC_JSON`` loads one
model in one format, times it on seeded frames and prints one JSON line with latency and resident memory.
A fresh process per format keeps the memory numbers apart (an interpreter's arena, torch's allocator and
imported libraries never leave a process), and an interpreter format imports firmware_sim only, as on a
device. Heavy imports (torch, edgead, export) stay inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INTERPRETER_FORMATS = ("tflite-int8", "onnx-int8", "onnx")
HOST_MODULES = ("torch", "tensorflow", "edgead", "export")


# -- frames and timing -----------------------------------------------------------------------------------
def random_frames(size: int, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """The same seeded uint8 frames for every model and format (latency does not depend on the pixels)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def time_ms(fn: Callable, frames: list, runs: int, warmup: int = 3) -> list[float]:
    """Milliseconds of `runs` calls of fn over the frames in turn, after `warmup` untimed calls."""
    for i in range(warmup):
        fn(frames[i % len(frames)])
    ms = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(frames[i % len(frames)])
        ms.append(1000.0 * (time.perf_counter() - t0))
    return ms


def p50_ms(fn: Callable, frames: list, runs: int, warmup: int = 3) -> float:
    return float(np.percentile(time_ms(fn, frames, runs, warmup), 50))


def torch_predict(model, pre) -> Callable:
    """One frame through a float torch detector as the host runs it: normalise, then model.predict."""
    import torch

    def f(img: np.ndarray):
        with torch.no_grad():
            model.predict(torch.from_numpy(pre.normalize(img[None])))
    return f


# -- a quickly trained run and its artifacts ----------------------------------------------------------------
def train_run(data_root: Path, task: str, det, out: Path, *, epochs: int = 1,
              weights: str | None = None) -> dict:
    """One task of finetune training (batch 8): enough for a real checkpoint to export and time."""
    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data import TaskStream
    from edgead.engine.trainer import TrainConfig

    cfg = TrainConfig(epochs=epochs, batch_size=8, progress=False)
    return run_stream(TaskStream(data_root, [task]), det, cfg, ReplayConfig(), out, weights=weights,
                      log=lambda m: None)


def export_artifact(run_dir: Path, out: Path, formats: list[str], calibration: int = 8) -> Path:
    """Export a run (fidelity is measured and kept, not enforced: a 1-epoch student is not a deployment)."""
    from edgead.export.pipeline import ExportOptions, export_run

    export_run(run_dir, out, ExportOptions(formats=formats, calibration=calibration, allow_drift=True))
    return out


# -- one format in a fresh process --------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's peak resident set (VmHWM), else ru_maxrss (kB on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load(spec: dict) -> tuple[Callable, str]:
    """(frame -> result function, runtime name) for spec['format'] of one model."""
    fmt = spec["format"]
    if fmt == "torch":
        import torch

        from edgead.engine.checkpoint import load_checkpoint

        torch.set_num_threads(1)
        model, pre, _ = load_checkpoint(spec["checkpoint"])
        return torch_predict(model.eval(), pre), f"torch {torch.__version__}"
    from firmware_sim.device import Device

    d = Device(spec["artifact"], format=fmt, threads=1)
    return d.infer, d.interpreter


def measure_here(spec: dict) -> dict:
    """Load and time one format in this process: p50/p95 latency and resident memory before/after/peak."""
    frames = random_frames(spec["image_size"], spec.get("frames", 8), spec.get("seed", 0))
    rss_before = _rss_bytes()
    t0 = time.perf_counter()
    fn, runtime = _load(spec)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_bytes()
    ms = time_ms(fn, frames, spec["runs"], spec.get("warmup", 3))
    return {"runtime": runtime, "runs": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(np.mean(ms)), "load_s": load_s,
            "rss_before_load_bytes": rss_before, "rss_after_load_bytes": rss_loaded,
            "peak_rss_bytes": peak_rss_bytes(),
            "host_modules": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HOST_MODULES})}


def measure_in_subprocess(spec: dict, timeout: float | None = None) -> dict:
    """measure_here in a fresh single-threaded interpreter; a failure raises with the child's stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(spec)], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=False, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"measuring {spec['format']} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure_here(json.loads(sys.argv[1]))), flush=True)
