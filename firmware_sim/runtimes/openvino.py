"""OpenVINO: the IR graphs (model.xml + model.bin, float or NNCF int8) on the CPU plugin, NCHW, float I/O.

Precision is pinned to f32: the CPU plugin's default is bf16 on x86 CPUs with AMX/AVX512-BF16 and f16 on ARM,
which would make the device compute something other than what the export's fidelity check measured.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from firmware_sim.errors import UserError

DEVICE = "CPU"


def _dtype(element_type) -> str:
    name = element_type.get_type_name()  # f32, i8, u8, ...
    return {"f32": "float32", "i8": "int8", "u8": "uint8", "f16": "float16"}.get(name, name)


class OpenVinoRunner:
    name = "openvino"
    formats = ("openvino", "openvino-int8")
    layout = "NCHW"
    # x86-64 and aarch64 wheels (aarch64: manylinux_2_35, so Raspberry Pi OS Bookworm or later)
    requirements = ('openvino>=2025.0; platform_machine == "x86_64" or platform_machine == "aarch64"',)

    @classmethod
    def open(cls, model: str | os.PathLike, threads: int | None = None, delegates=None, **_) -> OpenVinoRunner:
        if delegates:
            raise UserError("--delegate applies to the tflite-int8 format only (OpenVINO runs on the CPU here)")
        return cls(model, threads)

    def __init__(self, model: str | os.PathLike, num_threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise UserError("openvino is not installed: pip install openvino (x86-64 and aarch64 wheels, glibc "
                            "2.35+: Raspberry Pi OS Bookworm or later), or use another format") from None
        path = Path(model)
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise UserError(f"{model}: an OpenVINO IR needs {path.name} and {path.with_suffix('.bin').name} side by "
                            "side")
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        try:
            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(path)), DEVICE, config)
        except Exception as e:  # openvino raises RuntimeError subclasses of its own for unreadable models
            raise UserError(f"{model}: OpenVINO cannot load it ({str(e).strip().splitlines()[0]})") from None
        self.module = "openvino"
        self.request = compiled.create_infer_request()
        self.inputs = {p.any_name: self._entry(p) for p in compiled.inputs}
        self._outputs = {p.any_name: p for p in compiled.outputs}
        self.outputs = {n: self._entry(p) for n, p in self._outputs.items()}

    def _entry(self, port) -> dict:
        return {"name": port.any_name, "shape": [int(d) for d in port.get_shape()],
                "dtype": _dtype(port.get_element_type()), "layout": self.layout, "quantization": None}

    def arena_bytes(self) -> int | None:
        return None  # OpenVINO does not report its memory

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        res = self.request.infer(inputs)
        # Copies: the request reuses its output buffers on the next call.
        return {n: np.array(res[p]) for n, p in self._outputs.items()}
