"""Running exported graphs as a device does: uint8 pixels in, int8 latent kept, anomaly map from the features.

The one implementation, used by the device (firmware_sim.device) and by the host's fidelity check
(export.runtime re-exports it). It imports numpy, an interpreter and firmware_sim only, never torch or
tensorflow (tensorflow.lite is the last resort when no lighter TFLite interpreter is installed); the
interpreters themselves are the small classes of firmware_sim.runtimes, one file each. So the host
measures exactly the device's arithmetic: the TFLite trunk's int8 latent goes into the head unchanged (the two
share scale and zero point by construction, see export/tflite.py) and the map is firmware_sim.anomaly_map on
the dequantised features. Outputs are always read by name (signature runner / ONNX names), never by position:
get_output_details() does not list a flatbuffer's outputs in model order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from firmware_sim import anomaly_map as amap_np
from firmware_sim import quantization
from firmware_sim.errors import UserError

# The runners live in firmware_sim.runtimes (one file per interpreter); re-exported here for existing callers.
from firmware_sim.runtimes import OnnxRunner, OpenVinoRunner, Runner, TFLiteRunner, open_runner  # noqa: F401
from firmware_sim.runtimes.litert import (  # noqa: F401
    EDGETPU_LIBRARY,
    SIGNATURE,
    _quiet_native_info,
    edgetpu_delegate,
    tflite_module,
)


def quantize(x: np.ndarray, entry: dict) -> np.ndarray:
    """Float (or uint8 pixels) -> the tensor's dtype with its (per-tensor) scale and zero point."""
    q = entry["quantization"]
    dtype = np.dtype(entry["dtype"])
    if q is None:
        return np.asarray(x, dtype)
    info = np.iinfo(dtype)
    return quantization.quantize(x, q["scale"][0], q["zero_point"][0], info.min, info.max).astype(dtype)


def dequantize(x: np.ndarray, entry: dict) -> np.ndarray:
    q = entry["quantization"]
    if q is None:
        return np.asarray(x, np.float32)
    return quantization.dequantize(x, q["scale"], q["zero_point"], axis=q["axis"])


def same_quantization(a: dict, b: dict) -> bool:
    qa, qb = a["quantization"], b["quantization"]
    if qa is None or qb is None:
        return qa is qb and a["dtype"] == b["dtype"]
    return (a["dtype"] == b["dtype"] and qa["zero_point"] == qb["zero_point"]
            and np.allclose(qa["scale"], qb["scale"], rtol=1e-6, atol=0))


def image_feed(runner, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 pixels (N, S, S, 3) -> the graph's 'image' input (layout, dtype and quantisation of the runner)."""
    entry = runner.inputs["image"]
    x = images if runner.layout == "NHWC" else np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return {"image": quantize(x.astype(np.float32) if entry["quantization"] is None else x, entry)}


@dataclass
class Prediction:
    maps: np.ndarray  # (N, S, S) float32
    scores: np.ndarray  # (N,)
    latents: np.ndarray | None  # (N, C, H, W) float32, dequantised; None without a trunk
    latency_ms: dict[str, float] = field(default_factory=dict)  # mean per image, per graph and the distance
    raw_latents: list[np.ndarray] | None = None  # the trunk's output as it came out (int8 NHWC for TFLite)


class DeployedDetector:
    """The graphs of one format (trunk/head/full runners) and how to turn pixels into maps."""

    def __init__(self, runners: dict, levels: Sequence[int], image_size: int, post: amap_np.ScorePost | None = None):
        """post: the score post-processing the model was calibrated with (the manifest's; default the maximum)."""
        self.runners, self.levels, self.image_size = runners, tuple(levels), int(image_size)
        self.post = post or amap_np.ScorePost()

    def _features(self, runner, out: dict[str, np.ndarray]) -> tuple[list, list]:
        t = [dequantize(out[f"teacher_{lv}"], runner.outputs[f"teacher_{lv}"]) for lv in self.levels]
        s = [dequantize(out[f"student_{lv}"], runner.outputs[f"student_{lv}"]) for lv in self.levels]
        return t, s

    def run_one(self, img: np.ndarray, path: str, clock: dict[str, float] | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """One uint8 image (1, S, S, 3) -> (post-processed map (1, S, S), the trunk's raw latent or None); adds
        seconds to clock."""
        clock = {} if clock is None else clock

        def timed(name, fn, *a, **kw):
            t0 = time.perf_counter()
            r = fn(*a, **kw)
            clock[name] = clock.get(name, 0.0) + time.perf_counter() - t0
            return r

        lat = None
        if path == "full":
            runner = self.runners["full"]
            out = timed("full", runner, **image_feed(runner, img))
        elif path == "trunk+head":
            trunk, head = self.runners["trunk"], self.runners["head"]
            lat = timed("trunk", trunk, **image_feed(trunk, img))["latent"]
            lat_entry, head_entry = trunk.outputs["latent"], head.inputs["latent"]
            # Equal parameters: the int8 latent goes in byte for byte (what the replay buffer stores).
            feed = lat if same_quantization(lat_entry, head_entry) else quantize(dequantize(lat, lat_entry),
                                                                                head_entry)
            runner = head
            out = timed("head", head, latent=feed)
        else:
            raise UserError(f"path {path!r}: expected 'trunk+head' or 'full'")
        t, s = self._features(runner, out)
        amap = timed("distance", amap_np.anomaly_map, t, s, self.image_size, layout=runner.layout)
        return (timed("post", self.post.map, amap) if self.post.blur else amap), lat

    def predict(self, images: np.ndarray, path: str) -> Prediction:
        """images: uint8 (N, S, S, 3). path: 'trunk+head' (the continual-learning device) or 'full'."""
        if path not in ("trunk+head", "full"):
            raise UserError(f"path {path!r}: expected 'trunk+head' or 'full'")
        maps, latents, raw = [], [], []
        clock: dict[str, float] = {}
        for i in range(len(images)):
            m, lat = self.run_one(images[i:i + 1], path, clock)
            maps.append(m)
            if lat is not None:
                trunk = self.runners["trunk"]
                z = dequantize(lat, trunk.outputs["latent"])
                latents.append(z if trunk.layout == "NCHW" else z.transpose(0, 3, 1, 2))
                raw.append(lat)
        m = np.concatenate(maps)
        n = max(len(images), 1)
        return Prediction(m, self.post.score(m), np.concatenate(latents) if latents else None,
                          {k: 1000.0 * v / n for k, v in clock.items()}, raw or None)
