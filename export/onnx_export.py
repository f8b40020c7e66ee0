"""ONNX fp32 and static QDQ int8 (docs/toolchain.md): legacy torch.onnx exporter, opset 17, batch 1;
onnxruntime quant_pre_process -> quantize_static (QDQ, per-channel int8 weights, int8 activations, MinMax).

QDQ keeps float inputs and outputs, so the same runtime code feeds both. The image input's range is pinned
to 0..255 (scale 1) rather than calibrated, for the same reason as in tflite.py: pixels are then exact and a
test image brighter than the calibration set does not saturate.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from edgead.export.graphs import IMAGE, GraphSpec

OPSET = 17


def export_fp32(module: torch.nn.Module, spec: GraphSpec, shape: tuple[int, ...], path: Path) -> Path:
    example = torch.zeros(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; it is the path that works
        torch.onnx.export(module, (example,), str(path), input_names=[spec.input], output_names=list(spec.outputs),
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    return path


class _Reader:
    """onnxruntime CalibrationDataReader over NCHW float32 batch-1 inputs."""

    def __init__(self, name: str, samples: Iterable[np.ndarray]):
        self._it = iter({name: np.ascontiguousarray(s, np.float32)} for s in samples)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # not needed for MinMax; present for older onnxruntime versions that call it
        pass


def quantize_int8(fp32_path: Path, out_path: Path, spec: GraphSpec, samples: Iterable[np.ndarray]) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    overrides = {}
    if spec.input == IMAGE:
        overrides = {IMAGE: [{"rmin": np.float32(0.0), "rmax": np.float32(255.0)}]}
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".onnxq-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        quantize_static(str(pre), str(out_path), _Reader(spec.input, samples), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"TensorQuantOverrides": overrides} if overrides else {})
    return out_path
