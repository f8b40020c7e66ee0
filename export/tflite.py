"""Full-int8 TFLite: Keras mirror -> calibrated float model -> int8 with the input ranges we know.

Path (docs/toolchain.md): the Keras mirror of keras_mirror.py, converted by tf.lite.TFLiteConverter with a
representative dataset and TFLITE_BUILTINS_INT8 (int8 weights per channel, int8 activations, static batch-1
shapes): the form the Edge TPU compiler and TFLite Micro require.

One step is split in two on purpose: the converter first only calibrates (min/max per tensor), then the input
ranges are set to what we know rather than what the calibration images happened to cover, then the model is
quantised. Why: an image input's range is exactly 0..255 (calibrated, a dark batch would give scale < 1 and
bright test pixels would saturate), and the head's latent input must carry exactly the trunk's output
scale and zero point so the device feeds (and stores in its replay buffer) the trunk's int8 output unchanged.
The calibrate-only flag and mlir_quantize are the converter's own two steps, used as the converter uses them;
they are not public API, so formats.py checks the result (input range as requested, fully int8) every time.

Weight granularity (GRANULARITIES): per channel by default. Per-tensor weights cost pixel AUROC; "mixed"
(per-tensor 1x1 convs only) stays within the export tolerance but uses most of it, for a few percent fewer
bytes (benchmarks/study_size.py; numbers in benchmarks/README.md). The bytes that per-channel scales seemed to
cost were mostly the converter's serialisation (an int64 zero-point vector per tensor), which
export/tflite_size.compact_tflite removes without changing a value.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from edgead.export.graphs import IMAGE, GraphSpec, feature_names
from edgead.export.keras_mirror import build_stages, pixel_normalisation

from edgead.errors import EdgeadError

FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}
# How weights are quantised: one scale per output channel (the default), one per tensor, or per channel
# except for 1x1 convolutions (see _mixed).
GRANULARITIES = ("per-channel", "per-tensor", "mixed")
# Activation width. int8 (the default): what XNNPACK, TFLite Micro and the Edge TPU run. int16 ("16x8": int16
# activations, int8 weights, int64 biases): about 256 times finer rounding at every layer. Why it exists: the
# int8 graphs' rounding differs by one LSB between kernel families (XNNPACK, the built-in optimised and the
# reference kernels, and ARM's vs x86's builds), and these nets carry such differences through every layer
# into the teacher/student features, whose distance is small; int8 scores then move by tens of percent of the
# threshold between CPUs (docs/device-runtimes.md). With int16 activations XNNPACK declines the graph and every
# CPU runs TFLite's own integer kernels, which agree to well under 1 % of the threshold.
ACTIVATIONS = ("int8", "int16")


@contextlib.contextmanager
def _captured_output():
    """Send the converter's C++ and Keras chatter (fd 1 and 2) to a temporary file; on failure, put its tail
    into the error so nothing useful is lost."""
    with tempfile.TemporaryFile() as log:
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except Exception as e:
            sys.stdout.flush()
            sys.stderr.flush()
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            hint = ""
            if isinstance(e, TypeError) and "'NoneType' object is not callable" in str(e):
                hint = (f" (the converter could not save the model in the temporary folder {tempfile.gettempdir()}"
                        ": check its free space and file size limit, or set TMPDIR to a folder with room)")
            raise EdgeadError(f"TFLite conversion failed: {type(e).__name__}: {e}{hint}\n{tail}") from e
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def import_tensorflow():
    """tensorflow, imported quietly (its import prints CPU-feature and plugin notices on stderr)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _captured_output():
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def keras_graph(model, pre, spec: GraphSpec):
    """The Keras mirror (NHWC, batch 1) of one graph, with torch weights copied in."""
    import_tensorflow()
    import keras

    if model.config.backbone != "mcunet-in3":
        raise EdgeadError(f"tflite-int8 export needs the Keras mirror, which exists for mcunet-in3 only (this run "
                          f"is {model.config.backbone}); use --format onnx,onnx-int8")
    levels = model.config.levels
    s = model.config.image_size
    if spec.input == IMAGE:
        inp = keras.Input((s, s, 3), batch_size=1, name="image")
        x = pixel_normalisation(inp, pre.mean, pre.std)
    else:
        c, h, w = model.latent_shape()
        inp = x = keras.Input((h, w, c), batch_size=1, name="latent")
    if spec.name != "head" and model.trunk is not None:
        x = build_stages(x, model.trunk, (), "trunk_")[0]
    if spec.name == "trunk":
        return keras.Model(inp, {"latent": x}, name=spec.name)
    t = build_stages(x, model.teacher_tail, levels, "teacher_")
    st = build_stages(x, model.student_tail, levels, "student_")
    outs = dict(zip(feature_names(levels), [f for pair in zip(t, st, strict=True) for f in pair], strict=True))
    return keras.Model(inp, outs, name=spec.name)


def quant_range(scale: float, zero_point: int, dtype: str = "int8") -> tuple[float, float]:
    """The float interval an int8/uint8 tensor with these parameters covers (what the head's input must match)."""
    info = np.iinfo(np.dtype(dtype))
    return scale * (info.min - zero_point), scale * (info.max - zero_point)


def convert_int8(keras_model, samples: Callable[[], Iterable[np.ndarray]], io: str,
                 input_range: tuple[float, float], granularity: str = "per-channel", activations: str = "int8"
                 ) -> bytes:
    """Full-integer TFLite flatbuffer. ``samples()`` yields NHWC float32 batch-1 inputs for calibration;
    ``input_range`` replaces the calibrated range of the model's input; ``granularity`` (GRANULARITIES) is
    how weights are quantised; ``activations`` (ACTIVATIONS) their width (int16: I/O int16, input range
    calibrated, see _convert_16x8)."""
    if granularity not in GRANULARITIES:
        raise EdgeadError(f"weight granularity {granularity!r}: expected one of {', '.join(GRANULARITIES)}")
    if activations not in ACTIVATIONS:
        raise EdgeadError(f"activations {activations!r}: expected one of {', '.join(ACTIVATIONS)}")
    tf = import_tensorflow()
    _check_converter_temp(keras_model)
    if activations == "int16":
        with _captured_output():
            return _convert_16x8(tf, keras_model, samples, granularity == "per-channel")
    with _captured_output():
        calibrated = _calibrate(tf, keras_model, samples, input_range)
        io_type = {"int8": tf.int8, "uint8": tf.uint8}[io]
        if granularity == "mixed":
            return _mixed(_quantize(calibrated, io_type, True), _quantize(calibrated, io_type, False))
        return _quantize(calibrated, io_type, granularity == "per-channel")


def _check_converter_temp(keras_model) -> None:
    """The converter first saves the model as a SavedModel in the system temporary folder; if that fails (a
    full disk, `ulimit -f`) it swallows the error and falls back to a path that breaks under Keras 3 with
    "'NoneType' object is not callable". Check the folder can take the weights first, and say where."""
    from edgead.outputs import check_writable

    folder = tempfile.gettempdir()
    weights = 4 * int(keras_model.count_params())  # the SavedModel's variables file, float32
    try:
        check_writable(folder, what="TFLite conversion's temporary folder", largest_file=weights,
                       total_bytes=2 * weights)
    except EdgeadError as e:
        raise EdgeadError(f"{e} (the converter saves the model there first; set TMPDIR to a folder with room)") from None


def _convert_16x8(tf, keras_model, samples, per_channel: bool) -> bytes:
    """int16 activations, int8 weights, through the converter's own 16x8 path (its older calibrator: the
    split calibrate/quantise of the int8 path does not produce valid 16x8 graphs). int16 tensors are symmetric
    (zero point 0), so the input's scale comes from the calibration's largest |value|: 1/128 of an 8-bit
    pixel step for images, which keeps pixels exact to well under half a step; a value past the calibrated
    largest saturates, as in every int8 layer."""
    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x] for x in samples())
    conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    conv.inference_input_type = tf.int16
    conv.inference_output_type = tf.int16
    conv._experimental_disable_per_channel = not per_channel
    return bytes(conv.convert())


def _quantize(calibrated: bytes, io_type, per_channel: bool) -> bytes:
    from tensorflow.lite.python.convert import mlir_quantize

    return bytes(mlir_quantize(calibrated, disable_per_channel=not per_channel, input_data_type=io_type,
                               output_data_type=io_type))


def _calibrate(tf, keras_model, samples, input_range: tuple[float, float]) -> bytes:
    """The float model with calibrated min/max per tensor, the input's range replaced by ``input_range``."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x] for x in samples())
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv._experimental_calibrate_only = True  # the converter's first step only (see module docstring)
    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the input range is set explicitly just below.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        calibrated = conv.convert()  # float, with min/max per tensor; the I/O types are set by mlir_quantize

    fb = fbu.read_model_from_bytearray(bytearray(calibrated))
    sg = fb.subgraphs[0]
    if len(sg.inputs) != 1:
        raise EdgeadError(f"internal: expected one input in {keras_model.name}, found {len(sg.inputs)}")
    q = sg.tensors[sg.inputs[0]].quantization
    lo, hi = float(input_range[0]), float(input_range[1])
    q.min, q.max = [min(lo, 0.0)], [max(hi, 0.0)]
    return bytes(fbu.convert_object_to_bytearray(fb))


def _is_pointwise_conv(model, op, tensors) -> bool:
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    return (fbu.opcode_to_name(model, op.opcodeIndex) == "CONV_2D"
            and tuple(tensors[op.inputs[1]].shape[1:3]) == (1, 1))


def _mixed(per_channel: bytes, per_tensor: bytes) -> bytes:
    """The per-channel model with the weights and biases of its 1x1 convolutions taken from the per-tensor
    one.

    Both come from the same calibrated model, so their graphs and activation ranges are identical (checked:
    any difference refuses the splice); only a 1x1 conv's weight scale (one instead of one per output channel)
    and hence its bias scale differ. Depthwise and k x k convs, whose few weights per channel vary most in
    range, stay per channel."""
    from edgead.export.tflite_size import pack_model
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    pc = fbu.read_model_from_bytearray(bytearray(per_channel))
    pt = fbu.read_model_from_bytearray(bytearray(per_tensor))
    users: dict[int, int] = {}
    for sg in pc.subgraphs:
        for t in sg.tensors:
            users[t.buffer] = users.get(t.buffer, 0) + 1
    for g, (a, b) in enumerate(zip(pc.subgraphs, pt.subgraphs, strict=True)):
        same = len(a.operators) == len(b.operators) and len(a.tensors) == len(b.tensors) and all(
            fbu.opcode_to_name(pc, x.opcodeIndex) == fbu.opcode_to_name(pt, y.opcodeIndex)
            and list(x.inputs) == list(y.inputs) and list(x.outputs) == list(y.outputs)
            for x, y in zip(a.operators, b.operators, strict=False))
        if not same:
            raise EdgeadError(f"internal: per-channel and per-tensor conversions differ in graph {g}; "
                              "cannot mix")
        for op in a.operators:
            if not _is_pointwise_conv(pc, op, a.tensors):
                continue
            for i in op.inputs[1:3]:
                ta, tb = a.tensors[i], b.tensors[i]
                old, new = pc.buffers[ta.buffer].data, pt.buffers[tb.buffer].data
                # A buffer the converter shares between tensors (e.g. all-zero biases) must keep its bytes.
                shared_changed = users[ta.buffer] > 1 and not np.array_equal(old, new)
                if shared_changed or tuple(ta.shape) != tuple(tb.shape) or ta.type != tb.type:
                    raise EdgeadError(f"internal: cannot mix granularity for tensor {ta.name!r}")
                ta.quantization = tb.quantization
                pc.buffers[ta.buffer].data = new
        for x, y in zip(a.tensors, b.tensors, strict=True):
            activation = pc.buffers[x.buffer].data is None
            if activation and not _same_activation_quant(x.quantization, y.quantization):
                raise EdgeadError(f"internal: activation {x.name!r} is quantised differently per granularity")
    return pack_model(pc)  # flatbuffer_utils' own writer would leave buffer data 1-byte aligned


def _same_activation_quant(a, b) -> bool:
    if (a is None) != (b is None):
        return False
    return a is None or (np.array_equal(a.scale, b.scale) and np.array_equal(a.zeroPoint, b.zeroPoint))


def inspect(flatbuffer: bytes) -> dict[str, Any]:
    """Every tensor's type and every op, from the flatbuffer itself (all subgraphs)."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    m = fbu.read_model_from_bytearray(bytearray(flatbuffer))
    tensors, ops = [], []
    for g, sg in enumerate(m.subgraphs):
        io = set(sg.inputs) | set(sg.outputs)
        for i, t in enumerate(sg.tensors):
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            tensors.append({"subgraph": g, "index": i, "name": name, "type": fbu.type_to_name(t.type),
                            "shape": [int(v) for v in (t.shape if t.shape is not None else [])], "io": i in io})
        for op in sg.operators:
            ops.append(fbu.opcode_to_name(m, op.opcodeIndex))
    return {"tensors": tensors, "ops": ops}


def check_fully_int8(flatbuffer: bytes, what: str) -> dict[str, Any]:
    """Refuse a model with any float tensor or (de)quantise-to-float op; uint8 only at the model's I/O.

    Returns a summary (op counts, tensor type counts) for the manifest."""
    info = inspect(flatbuffer)
    bad = [t for t in info["tensors"] if t["type"] in FLOAT_TYPES or (t["type"] == "UINT8" and not t["io"])]
    bad_ops = sorted({o for o in info["ops"] if o == "DEQUANTIZE"})
    if bad or bad_ops:
        listed = ", ".join(f"{t['name']} ({t['type']})" for t in bad[:8])
        raise EdgeadError(f"{what}: not fully integer: {len(bad)} float/uint8 tensor(s) in the int8 body "
                          f"[{listed}]{' and ops ' + ', '.join(bad_ops) if bad_ops else ''}")
    types: dict[str, int] = {}
    for t in info["tensors"]:
        types[t["type"]] = types.get(t["type"], 0) + 1
    op_counts: dict[str, int] = {}
    for o in info["ops"]:
        op_counts[o] = op_counts.get(o, 0) + 1
    return {"fully_int8": True, "tensor_types": types, "ops": op_counts}
