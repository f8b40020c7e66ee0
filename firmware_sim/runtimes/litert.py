"""LiteRT (TFLite): the int8 graphs, on the CPU through XNNPACK or the built-in kernels, or on a Coral Edge TPU.

Takes the lightest interpreter installed: ai-edge-litert, else tflite-runtime (the build a Coral's libedgetpu
pairs with on Raspberry Pi OS Bookworm, docs/device-runtimes.md), else tensorflow.lite as the last resort.
Outputs are read by name through the signature runner: get_output_details() does not list a flatbuffer's
outputs in model order.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

import numpy as np

from firmware_sim.errors import UserError

SIGNATURE = "serving_default"
EDGETPU_LIBRARY = "libedgetpu.so.1"
# Lightest first: tensorflow is ~1.3 GB and only a fallback for a host that has nothing else.
_TFLITE_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
# libedgetpu is built against one TensorFlow Lite and crashes with interpreters from later ones (TFLite 2.12+
# with Coral's own 2021 build: google-coral/edgetpu#812); the bundle pins a tflite-runtime that matches the
# community libedgetpu builds for Bookworm, so with the Edge TPU that interpreter is taken first.
_EDGETPU_MODULES = ("tflite_runtime.interpreter", "ai_edge_litert.interpreter", "tensorflow.lite")
EDGETPU_REQUIREMENTS = (
    'tflite-runtime==2.14.0; python_version < "3.12"',
    'ai-edge-litert>=2.1; python_version >= "3.12" and platform_machine != "armv7l"',
)


def tflite_module(edgetpu: bool = False):
    """(module name, Interpreter class, load_delegate function) of the lightest TFLite interpreter installed;
    ``edgetpu``: tflite-runtime first, the build that libedgetpu is paired with (EDGETPU_REQUIREMENTS)."""
    for name in _EDGETPU_MODULES if edgetpu else _TFLITE_MODULES:
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

    _, _, load_delegate = tflite_module(edgetpu=True)
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

    name = "litert"
    formats = ("tflite-int8",)
    layout = "NHWC"
    # pip lines of a device bundle (firmware_sim.requirements): ai-edge-litert has aarch64 and x86-64 wheels
    # only; 32-bit Raspberry Pi OS (armv7l) gets tflite-runtime. A Coral's pin is EDGETPU_REQUIREMENTS.
    requirements = ('ai-edge-litert>=2.1; platform_machine != "armv7l"',
                    'tflite-runtime>=2.13; platform_machine == "armv7l"')

    @classmethod
    def open(cls, model: bytes | str | os.PathLike, threads: int | None = None, delegates: Sequence | None = None,
             xnnpack: bool = True, **_) -> TFLiteRunner:
        return cls(model, threads, delegates, xnnpack)

    def __init__(self, model: bytes | str | os.PathLike, num_threads: int | None = None,
                 delegates: Sequence | None = None, xnnpack: bool = True):
        self.module, interpreter_cls, _ = tflite_module(edgetpu=bool(delegates))  # the delegate's own module
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
