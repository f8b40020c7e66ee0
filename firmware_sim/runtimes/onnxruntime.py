"""ONNX Runtime: the float and QDQ-int8 ONNX graphs on the CPU (float inputs and outputs, NCHW)."""

from __future__ import annotations

import os

import numpy as np

from firmware_sim.errors import UserError

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


class OnnxRunner:
    name = "onnxruntime"
    formats = ("onnx-int8", "onnx")
    layout = "NCHW"
    requirements = ('onnxruntime>=1.16; platform_machine != "armv7l"',)  # aarch64 and x86-64 wheels

    @classmethod
    def open(cls, model: str | os.PathLike, threads: int | None = None, delegates=None, **_) -> OnnxRunner:
        if delegates:
            raise UserError("--delegate applies to the tflite-int8 format only (ONNX Runtime runs on the CPU here)")
        return cls(model, threads)

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
