"""Which exported format is fastest on *this* machine: every format of an artifact timed in the same run.

Speed depends on the interpreter build and the CPU (XNNPACK's int8 kernels win on ARM, lose to the built-in
ones on some x86 machines; ONNX Runtime may beat both), so the recommendation is measured, never assumed.
The formats are timed in interleaved rounds (one image of each format per round) so that a change of load
on a shared machine affects them all alike; a format that cannot load here (no onnxruntime, say) is listed
with the reason and left out of the choice.
"""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from firmware_sim.device import Device
from firmware_sim.errors import UserError


def compare_formats(artifact: str | os.PathLike, formats: list[str], frame: Image.Image | str | os.PathLike,
                    runs: int = 20, warmup: int = 3, threads: int | None = None, xnnpack: bool = True) -> dict:
    """Time ``frame`` through every format in ``formats``.

    Args:
        artifact: the artifact folder.
        formats: format names of the artifact to compare.
        frame: the image every format scores (a camera-sized frame: resizing is part of the work).
        runs: timed rounds; warmup: untimed rounds first.
        threads, xnnpack: as for Device.
    Returns:
        {'formats': {fmt: {'available', 'interpreter', 'p50_ms', 'mean_ms'} or {'available': False,
        'reason'}}, 'recommended': the fastest format by median latency (None if none loads), 'runs', 'basis'}.
    """
    if runs < 1 or warmup < 0:
        raise UserError(f"format comparison: runs {runs} / warm-up {warmup}: expected runs >= 1, warm-up >= 0")
    devices: dict[str, Device] = {}
    rows: dict[str, dict] = {}
    for fmt in formats:
        try:
            devices[fmt] = Device(artifact, format=fmt, threads=threads, xnnpack=xnnpack)
        except UserError as e:
            rows[fmt] = {"available": False, "reason": str(e)}
    ms: dict[str, list[float]] = {fmt: [] for fmt in devices}
    for r in range(warmup + runs):
        for fmt, dev in devices.items():
            t0 = time.perf_counter()
            dev.infer(frame)
            if r >= warmup:
                ms[fmt].append(1000.0 * (time.perf_counter() - t0))
    for fmt, dev in devices.items():
        a = np.asarray(ms[fmt])
        rows[fmt] = {"available": True, "interpreter": dev.interpreter, "path": dev.path,
                     "p50_ms": float(np.median(a)), "mean_ms": float(a.mean())}
    timed = [f for f in formats if rows[f]["available"]]
    best = min(timed, key=lambda f: rows[f]["p50_ms"]) if timed else None
    return {"formats": {f: rows[f] for f in formats}, "recommended": best, "runs": runs, "warmup": warmup,
            "basis": "median latency per image (preprocess + graphs + distance), formats timed in interleaved "
                     "rounds in this run, on this machine"}
