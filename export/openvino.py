"""OpenVINO IR (model.xml + model.bin) from the same ONNX graphs the onnx format writes; int8 by NNCF.

fp32: torch -> ONNX (export/onnx_export.py, legacy exporter, opset 17) -> openvino.convert_model -> IR with
fp32 weights (``compress_to_fp16=False``: the IR's default fp16 weight compression would be a second, silent
quantisation that the fidelity check did not ask for).

int8: NNCF post-training quantisation of that IR (``nncf.quantize``) on the export's calibration images, fed as
the device feeds them (pixels for image graphs; the exported trunk's latents for PaSTe's head, as in
formats.py). Preset MIXED: symmetric int8 weights per channel, asymmetric activations, because the latent and
many block outputs are BatchNorm outputs without an activation and are not centred on zero. Float inputs and
outputs, NCHW, like the ONNX formats, so one runtime path (firmware_sim.runtimes.openvino) serves both.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from edgead.export.formats import FILE_SUFFIX, FormatExport, graph_entry, image_samples, latent_samples
from edgead.export.graphs import IMAGE, graph_specs, input_shape, torch_graph
from edgead.export.onnx_export import export_fp32

from edgead.errors import EdgeadError
from edgead.models.teacher_student import TeacherStudent
from firmware_sim.preprocess import Preprocess
from firmware_sim.runtimes.openvino import OpenVinoRunner

NNCF_PRESET = "mixed"


def _require():
    try:
        import openvino as ov
    except ImportError:
        raise EdgeadError("--format openvino needs the openvino package: pip install 'edgead[host]' (or pip "
                          "install openvino)") from None
    return ov


def quantize_nncf(ov_model, samples: Iterable[np.ndarray], name: str, count: int):
    """The IR quantised to int8 by NNCF on ``samples`` (NCHW float32 batch-1 inputs of input ``name``)."""
    try:
        import nncf
    except ImportError:
        raise EdgeadError("--format openvino-int8 needs nncf (post-training quantisation): pip install nncf, "
                          "or export --format openvino (fp32)") from None
    data = [{name: np.ascontiguousarray(s, np.float32)} for s in samples]
    if not data:
        raise EdgeadError("no calibration samples for the OpenVINO int8 quantisation")
    nncf.set_log_level(logging.ERROR)
    # NNCF draws progress bars on stdout/stderr; the export reports its own progress.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(ov_model, nncf.Dataset(data), preset=nncf.QuantizationPreset(NNCF_PRESET),
                             subset_size=count, target_device=nncf.TargetDevice.CPU)


def export_openvino(model: TeacherStudent, pre: Preprocess, calib: np.ndarray, folder: Path,
                    quantized: bool) -> FormatExport:
    ov = _require()
    name = "openvino-int8" if quantized else "openvino"
    fx = FormatExport(name, notes={"layout": "NCHW", "io": "float32", "runtime": "openvino",
                                   "inference_precision": "f32"})
    work = folder / f".work-{name}"
    work.mkdir()
    try:
        for spec in graph_specs(model):
            onnx = export_fp32(torch_graph(model, pre, spec.name), spec, input_shape(model, spec),
                               work / f"{spec.name}.onnx")
            try:
                ir = ov.convert_model(str(onnx))
            except Exception as e:  # openvino's own conversion errors
                raise EdgeadError(f"internal: OpenVINO cannot convert {spec.name}.onnx ({e})") from None
            if quantized:
                samples = (image_samples(calib, "NCHW")() if spec.input == IMAGE
                           else iter(latent_samples(fx.runners["trunk"], calib)))
                ir = quantize_nncf(ir, samples, spec.input, len(calib))
            file = spec.name + FILE_SUFFIX[name]
            xml = folder / file
            ov.save_model(ir, str(xml), compress_to_fp16=False)
            runner = OpenVinoRunner(xml)
            fx.runners[spec.name] = runner
            fx.graphs[spec.name] = dict(graph_entry(runner, spec, file), weights=xml.with_suffix(".bin").name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fx.notes["conversion"] = "openvino.convert_model from the fp32 ONNX graph; IR weights kept in fp32"
    if quantized:
        fx.notes["quantization"] = (f"NNCF {_version('nncf')} post-training quantisation (preset {NNCF_PRESET}: "
                                    "int8 weights per channel, asymmetric int8 activations) on the export's "
                                    "calibration images; float inputs and outputs")
    return fx


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"
