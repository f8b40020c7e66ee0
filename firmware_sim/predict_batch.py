"""Score a stack of prepared views with every format of an artifact and save the maps and scores (.npz).

The device half of the arm64 check (scripts/arm64_check.sh): the same command runs on the host and inside an
emulated arm64 root, on the same uint8 views, so the two .npz files differ only by the CPU's kernels. Numpy,
an interpreter and firmware_sim only, like the rest of the device code.

    python -m firmware_sim.predict_batch --artifact ART --pixels VIEWS.npy --out SCORES.npz [--no-xnnpack]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from firmware_sim.atomic import atomic_write
from firmware_sim.device import Device
from firmware_sim.errors import UserError
from firmware_sim.manifest import load_manifest

_DISTS = ("numpy", "ai-edge-litert", "tflite-runtime", "onnxruntime", "openvino", "pillow")


def load_views(path: str | os.PathLike) -> np.ndarray:
    """uint8 views (N, S, S, 3) from a .npy file, or a UserError saying what is expected."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npy array ({e}); expected uint8 views (N, S, S, 3)") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"{path}: array {x.dtype} {x.shape}; expected uint8 views (N, S, S, 3)")
    return x


def environment() -> dict:
    """This machine and the interpreter builds that computed the scores."""
    versions = {}
    for d in _DISTS:
        try:
            versions[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return {"machine": platform.machine(), "python": platform.python_version(), "packages": versions}


def predict_all(artifact: str | os.PathLike, views: np.ndarray, formats: list[str] | None = None,
                xnnpack: bool = True, threads: int | None = 1) -> dict[str, np.ndarray]:
    """{'<format>/maps': (N, S, S) float32, '<format>/scores': (N,) float64} for each format, on the device path
    (trunk+head for PaSTe, full for STFPM). A format whose runtime is missing here is skipped and named in
    '<format>/skipped'."""
    out: dict[str, np.ndarray] = {}
    for fmt in load_manifest(artifact).formats if formats is None else formats:
        try:
            dev = Device(artifact, format=fmt, threads=threads, xnnpack=xnnpack)
        except UserError as e:
            out[f"{fmt}/skipped"] = np.asarray(str(e))
            continue
        pred = dev.detector.predict(views, dev.path)
        out[f"{fmt}/maps"] = pred.maps.astype(np.float32)
        out[f"{fmt}/scores"] = np.asarray(pred.scores, np.float64)
        out[f"{fmt}/path"] = np.asarray(dev.path)
        out[f"{fmt}/interpreter"] = np.asarray(dev.interpreter)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m firmware_sim.predict_batch", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True, help="Artifact folder (a bundle's artifact/).")
    p.add_argument("--pixels", required=True, help="uint8 views (N, S, S, 3) in a .npy file.")
    p.add_argument("--out", required=True, help="The .npz file to write.")
    p.add_argument("--formats", default=None, help="Comma-separated formats (default: every one in the artifact).")
    p.add_argument("--no-xnnpack", action="store_true", help="TFLite: built-in kernels without XNNPACK.")
    p.add_argument("--threads", type=int, default=1, help="Interpreter threads (default 1).")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # LiteRT's INFO lines stay off stderr (runtimes.litert)
    try:
        views = load_views(a.pixels)
        fmts = [f.strip() for f in a.formats.split(",") if f.strip()] if a.formats else None
        arrays = predict_all(a.artifact, views, fmts, xnnpack=not a.no_xnnpack, threads=a.threads)
        arrays["environment"] = np.asarray(json.dumps(environment() | {"xnnpack": not a.no_xnnpack}))
        out = Path(a.out)
        atomic_write(out, lambda f: np.savez(f, **arrays))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "views": len(views),
                      "formats": sorted({k.split('/')[0] for k in arrays if k.endswith('/scores')})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
