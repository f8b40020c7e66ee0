"""Each export format: write its graphs into a folder, describe their I/O, and give a runnable detector.

Calibration samples follow the deployed data path: image graphs see the calibration images as pixels; the
PaSTe head sees the *exported* trunk's latents on those images (for TFLite, the int8 latents dequantised),
i.e. exactly what it receives on the device.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from edgead.export.graphs import IMAGE, GraphSpec, graph_specs, input_shape, torch_graph

from edgead.errors import EdgeadError
from edgead.models.teacher_student import TeacherStudent
from firmware_sim.anomaly_map import ScorePost
from firmware_sim.preprocess import Preprocess
from firmware_sim.runtime import (
    DeployedDetector,
    OnnxRunner,
    TFLiteRunner,
    dequantize,
    image_feed,
    same_quantization,
)

FORMATS = ("tflite-int8", "onnx", "onnx-int8", "openvino", "openvino-int8")
EDGETPU = "edgetpu"  # not a format of its own: tflite-int8 compiled for the Coral Edge TPU (firmware_sim.edgetpu)
FILE_SUFFIX = {"tflite-int8": ".int8.tflite", "onnx": ".onnx", "onnx-int8": ".int8.onnx",
               "openvino": ".openvino.xml", "openvino-int8": ".int8.openvino.xml"}  # + .bin beside each .xml


@dataclass
class FormatExport:
    name: str
    graphs: dict[str, dict] = field(default_factory=dict)  # manifest entries
    runners: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        # An OpenVINO graph is two files: the .xml and its "weights" (.bin).
        return [f for g in self.graphs.values() for f in (g["file"], g.get("weights")) if f]

    def detector(self, model: TeacherStudent) -> DeployedDetector:
        return DeployedDetector(self.runners, model.config.levels, model.config.image_size,
                                ScorePost.parse(model.config.score))


def graph_entry(runner, spec: GraphSpec, file: str) -> dict:
    # Outputs in the one fixed order of graphs.feature_names, whatever order the file lists them in.
    missing = [n for n in spec.outputs if n not in runner.outputs]
    if missing or spec.input not in runner.inputs:
        raise EdgeadError(f"internal: {file} lacks {missing or spec.input} (has {list(runner.outputs)})")
    return {"file": file, "inputs": [runner.inputs[spec.input]], "outputs": [runner.outputs[n] for n in spec.outputs]}


def image_samples(images: np.ndarray, layout: str) -> Callable:
    def gen():
        for i in range(len(images)):
            x = images[i:i + 1].astype(np.float32)
            yield x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return gen


def latent_samples(trunk, images: np.ndarray) -> list[np.ndarray]:
    """The exported trunk's latents of the calibration images, dequantised, in the trunk's own layout."""
    out = []
    for i in range(len(images)):
        lat = trunk(**image_feed(trunk, images[i:i + 1]))["latent"]
        out.append(dequantize(lat, trunk.outputs["latent"]))
    return out


def export_tflite(model: TeacherStudent, pre: Preprocess, calib: np.ndarray, folder: Path, io: str,
                  granularity: str = "per-channel", compact: bool = True, activations: str = "int8") -> FormatExport:
    """``granularity``: weight scales (edgead.export.tflite.GRANULARITIES); ``compact``: write each graph with
    edgead.export.tflite_size.compact_tflite (same values, ~20% fewer bytes: shared zero-point vectors, short
    names)."""
    from edgead.export.tflite import check_fully_int8, convert_int8, keras_graph, quant_range
    from edgead.export.tflite_size import compact_tflite

    wide = activations == "int16"  # 16x8 (export/tflite.py ACTIVATIONS): int16 I/O, calibrated input ranges
    fx = FormatExport("tflite-int8", notes={"io": "int16" if wide else io, "layout": "NHWC", "weights": granularity,
                                            "activations": activations,
                                            "serialisation": "compact" if compact else "converter"})
    for spec in graph_specs(model):
        km = keras_graph(model, pre, spec)
        if spec.input == IMAGE:
            samples, rng = image_samples(calib, "NHWC"), (0.0, 255.0)
        else:
            trunk = fx.runners["trunk"]
            lat = trunk.outputs["latent"]
            lats = latent_samples(trunk, calib)
            samples = lambda lats=lats: iter(lats)  # noqa: E731
            rng = quant_range(lat["quantization"]["scale"][0], lat["quantization"]["zero_point"][0], lat["dtype"])
        fb = convert_int8(km, samples, io, rng, granularity, activations)
        fb = compact_tflite(fb) if compact and not wide else fb
        file = spec.name + FILE_SUFFIX[fx.name]
        check = check_fully_int8(fb, file)
        runner = TFLiteRunner(fb)
        inp = runner.inputs[spec.input]
        got = quant_range(inp["quantization"]["scale"][0], inp["quantization"]["zero_point"][0], inp["dtype"])
        if not wide and not np.allclose(got, rng, rtol=1e-5, atol=1e-6 * max(abs(rng[0]), abs(rng[1]))):
            raise EdgeadError(f"internal: {file} input covers {got}, not the requested {rng} (converter change?)")
        (folder / file).write_bytes(fb)
        fx.runners[spec.name] = runner
        fx.graphs[spec.name] = dict(graph_entry(runner, spec, file), check=check)
    if "head" in fx.runners and wide:
        # 16x8: the head's input range is its own calibration's, so the device requantises the trunk's latent.
        fx.notes["latent_shared_quantization"] = False
    elif "head" in fx.runners:
        # By construction (tflite.py) the head reads the trunk's int8 latent as is; prove it.
        lat, head_in = fx.runners["trunk"].outputs["latent"], fx.runners["head"].inputs["latent"]
        if not same_quantization(lat, head_in):
            raise EdgeadError(f"internal: head input quantisation {head_in['quantization']} differs from the trunk "
                              f"latent's {lat['quantization']}")
        fx.notes["latent_shared_quantization"] = True
    return fx


def export_onnx(model: TeacherStudent, pre: Preprocess, calib: np.ndarray, folder: Path,
                quantized: bool) -> FormatExport:
    from edgead.export.onnx_export import export_fp32, quantize_int8

    name = "onnx-int8" if quantized else "onnx"
    fx = FormatExport(name, notes={"layout": "NCHW", "io": "float32"})
    work = folder / f".work-{name}"
    work.mkdir()
    try:
        for spec in graph_specs(model):
            file = spec.name + FILE_SUFFIX[name]
            target = folder / file
            fp32 = export_fp32(torch_graph(model, pre, spec.name), spec, input_shape(model, spec),
                               work / f"{spec.name}.onnx" if quantized else target)
            if quantized:
                samples = (image_samples(calib, "NCHW")() if spec.input == IMAGE
                           else iter(latent_samples(fx.runners["trunk"], calib)))
                quantize_int8(fp32, target, spec, samples)
            runner = OnnxRunner(target)
            fx.runners[spec.name] = runner
            fx.graphs[spec.name] = graph_entry(runner, spec, file)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if quantized:
        fx.notes["quantization"] = ("static QDQ, int8 weights per channel, int8 activations (MinMax); float "
                                    "inputs and outputs; image input range pinned to 0..255")
    return fx


def export_format(fmt: str, model: TeacherStudent, pre: Preprocess, calib: np.ndarray, folder: Path,
                  io: str, tflite_weights: str = "per-channel", compact: bool = True,
                  tflite_activations: str = "int8") -> FormatExport:
    """``compact``: tflite-int8 only; False keeps the converter's own files (for the Edge TPU compiler, which
    has not been shown to accept the compacted serialisation)."""
    if fmt == "tflite-int8":
        return export_tflite(model, pre, calib, folder, io, tflite_weights, compact, tflite_activations)
    if fmt in ("onnx", "onnx-int8"):
        return export_onnx(model, pre, calib, folder, quantized=fmt == "onnx-int8")
    if fmt in ("openvino", "openvino-int8"):
        # Imported only when asked: it needs openvino (and nncf for int8).
        from edgead.export.openvino import export_openvino

        return export_openvino(model, pre, calib, folder, quantized=fmt == "openvino-int8")
    raise EdgeadError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")


def parse_formats(text: str | list[str] | tuple[str, ...]) -> list[str]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise EdgeadError(f"--format {text!r}: expected a comma-separated list of {', '.join(FORMATS)}")
    unknown = [t for t in items if t not in (*FORMATS, EDGETPU)]
    if unknown:
        raise EdgeadError(f"unknown format{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                          f"expected one or more of {', '.join((*FORMATS, EDGETPU))}")
    return list(dict.fromkeys(items))
