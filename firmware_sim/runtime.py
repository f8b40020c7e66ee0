"""Running exported graphs as a device does: uint8 pixels in, int8 latent kept, anomaly map from the features.

The one implementation, used by the device (firmware_sim.device) and by the host's fidelity check
(export.runtime re-exports it). It imports numpy, an interpreter and firmware_sim only, never torch or
tensorflow (tensorflow.lite is the last resort when no lighter TFLite interpreter is installed), so the host
measures exactly the device's arithmetic: the TFLite trunk's int8 latent goes into the head unchanged (the two
share scale and zero point by construction, see export/tflite.py) and the map is firmware_sim.anomaly_map on
the dequantised features. Outputs are always read by name (signature runner / ONNX names), never by position:
get_output_details() does not list a flatbuffer's outputs in model order.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from firmware_sim import anomaly_map as amap_np
from firmware_sim import quantization
from firmware_sim.errors import UserError

SIGNATURE = "serving_default"
EDGETPU_LIBRARY = "libedgetpu.so.1"
_ORT_TYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}
# Lightest first: tensorflow is ~1.3 GB and only a fallback for a host that has nothing else.
_TFLITE_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def tflite_module():
    """(module name, Interpreter class, load_delegate function) of the lightest TFLite interpreter installed."""
    for name in _TFLITE_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if name == "tensorflow.lite":
            return name, mod.Interpreter, mod.experimental.load_delegate
        return name, mod.Interpreter, mod.load_delegate
    raise UserError("no TFLite interpreter is installed: pip install ai-edge-litert (or tflite-runtime on "
                    "Python <= 3.11 with numpy < 2), or use an ONNX format with onnxruntime")


def edgetpu_delegate():
    """The Edge TPU delegate (libedgetpu.so.1), or a UserError that says how to get it."""
    import ctypes

    _, _, load_delegate = tflite_module()
    try:
        # Probe the library first: a failed load_delegate leaves a half-built Delegate whose __del__ prints a
        # traceback (ai-edge-litert 2.3).
        ctypes.CDLL(EDGETPU_LIBRARY)
        return load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as e:
        raise UserError(f"--delegate edgetpu: cannot load {EDGETPU_LIBRARY} ({e}). Install the Edge TPU runtime "
                        "(Debian package libedgetpu1-std from Coral's apt repository) on a machine with a Coral "
                        "device attached, or run without --delegate on the CPU") from None


def _quant(details: dict) -> dict | None:
    qp = details.get("quantization_parameters", {})
    scales = np.asarray(qp.get("scales", []), np.float64)
    if scales.size == 0:
        return None
    return {"scale": [float(v) for v in scales], "zero_point": [int(v) for v in qp["zero_points"]],
            "axis": int(qp.get("quantized_dimension", 0)) if scales.size > 1 else None}


@contextlib.contextmanager
def _quiet_native_info():
    """LiteRT's C++ logger prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on stderr when a model
    is allocated and ignores TF_CPP_MIN_LOG_LEVEL; when that variable asks for no INFO lines (edgead sets it
    unless -v), stderr is muted for the allocation only. Load errors still arrive as exceptions."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    if not level.isdigit() or int(level) < 1:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TFLiteRunner:
    """One TFLite model through its signature: outputs by name, whatever order the flatbuffer lists them in."""

    layout = "NHWC"

    def __init__(self, model: bytes | str | os.PathLike, num_threads: int | None = None,
                 delegates: Sequence | None = None, xnnpack: bool = True):
        self.module, interpreter_cls, _ = tflite_module()
        kw = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        if delegates:
            kw["experimental_delegates"] = list(delegates)
        if not xnnpack:
            # The built-in int8 kernels without the default XNNPACK delegate: measured faster for these int8
            # graphs on x86 (benchmarks/bench_device.py); on ARM, XNNPACK usually wins. Measure per device.
            mod = importlib.import_module(self.module)
            resolver = getattr(mod, "OpResolverType", None) or mod.experimental.OpResolverType
            kw["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            with _quiet_native_info():
                self.interpreter = interpreter_cls(num_threads=num_threads, **kw)
                self.interpreter.allocate_tensors()  # applies the default delegate now, inside the muted block
                self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{model if not isinstance(model, bytes) else 'model'}: TFLite cannot load it ({e})") from None
        ins, outs = self.runner.get_input_details(), self.runner.get_output_details()
        self.inputs = {n: self._entry(n, d) for n, d in ins.items()}
        self.outputs = {n: self._entry(n, d) for n, d in outs.items()}

    def _entry(self, name: str, d: dict) -> dict:
        return {"name": name, "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "layout": self.layout, "quantization": _quant(d)}

    def arena_bytes(self) -> int | None:
        """Bytes of the interpreter's tensors (activations and I/O; weights live in the mapped model file)."""
        try:
            details = self.interpreter.get_tensor_details()
        except (AttributeError, RuntimeError, ValueError):
            return None
        total = 0
        for d in details:
            n = int(np.prod(d.get("shape", []))) if len(d.get("shape", [])) else 1
            total += n * np.dtype(d["dtype"]).itemsize
        return total

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner(**inputs)


class OnnxRunner:
    layout = "NCHW"

    def __init__(self, model: str | os.PathLike, num_threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("onnxruntime is not installed: pip install onnxruntime, or use the tflite-int8 "
                            "format") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # No busy-waiting between runs: it would steal the CPU from the numpy distance that follows.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if num_threads:
            opts.intra_op_num_threads = num_threads
        try:
            self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"{model}: onnxruntime cannot load it ({e})") from None
        self.module = "onnxruntime"
        self.inputs = {a.name: self._entry(a) for a in self.session.get_inputs()}
        self.outputs = {a.name: self._entry(a) for a in self.session.get_outputs()}
        self._names = list(self.outputs)

    def _entry(self, a) -> dict:
        return {"name": a.name, "shape": [int(v) for v in a.shape], "dtype": _ORT_TYPES.get(a.type, a.type),
                "layout": self.layout, "quantization": None}

    def arena_bytes(self) -> int | None:
        return None  # onnxruntime does not report its arena

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self.session.run(None, inputs), strict=True))


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

    def __init__(self, runners: dict, levels: Sequence[int], image_size: int):
        self.runners, self.levels, self.image_size = runners, tuple(levels), int(image_size)

    def _features(self, runner, out: dict[str, np.ndarray]) -> tuple[list, list]:
        t = [dequantize(out[f"teacher_{lv}"], runner.outputs[f"teacher_{lv}"]) for lv in self.levels]
        s = [dequantize(out[f"student_{lv}"], runner.outputs[f"student_{lv}"]) for lv in self.levels]
        return t, s

    def run_one(self, img: np.ndarray, path: str, clock: dict[str, float] | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """One uint8 image (1, S, S, 3) -> (map (1, S, S), the trunk's raw latent or None); adds seconds to clock."""
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
        return timed("distance", amap_np.anomaly_map, t, s, self.image_size, layout=runner.layout), lat

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
        return Prediction(m, amap_np.image_score(m), np.concatenate(latents) if latents else None,
                          {k: 1000.0 * v / n for k, v in clock.items()}, raw or None)
