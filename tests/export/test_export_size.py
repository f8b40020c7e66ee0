"""Bytes of the int8 TFLite graphs (issue #5): the breakdown accounts for every byte, compaction changes no
value and no output bit, and mixed weight granularity keeps the graph and activations of the per-channel one.

One module-scoped export of an untrained 64 px PaSTe-MCUNet (ImageNet teacher, random student: the bytes and
the bit-exactness do not depend on training) with the converter's own bytes serves every test.
"""

from __future__ import annotations

import numpy as np
import pytest
from edgead.export.formats import export_tflite, latent_samples
from edgead.export.graphs import GraphSpec, feature_names
from edgead.export.tflite import check_fully_int8, convert_int8, keras_graph, quant_range
from edgead.export.tflite_size import (
    CATEGORIES,
    buffer_data_offsets,
    compact_tflite,
    padding_bytes,
    short_tensor_name,
    tflite_size_breakdown,
)

from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig, TeacherStudent
from firmware_sim.preprocess import Preprocess, load_rgb
from firmware_sim.runtime import TFLiteRunner, image_feed
from tests.conftest import MCUNET_DIR

# Trains and exports real models: minutes on a 2-core machine (CI runs it; -m 'not slow' skips it).
pytestmark = pytest.mark.slow

SIZE = 64


@pytest.fixture(scope="module")
def exported(synth_root, tmp_path_factory) -> dict:
    """The shipped (compact) trunk, head and full graphs, and the converter's own bytes of the same head."""
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=SIZE)
    model = TeacherStudent(det, weights=str(MCUNET_DIR)).eval()
    pre = Preprocess(image_size=SIZE)
    files = sorted((synth_root / "nut" / "train" / "good").glob("*.png"))[:8]
    calib = np.stack([pre.resize_uint8(load_rgb(f)) for f in files])
    folder = tmp_path_factory.mktemp("tflite")
    fx = export_tflite(model, pre, calib, folder, "int8")
    # The head exactly as export_tflite converts it (same calibration latents, same input range), uncompacted.
    trunk = fx.runners["trunk"]
    lat = trunk.outputs["latent"]
    lats = latent_samples(trunk, calib)
    rng = quant_range(lat["quantization"]["scale"][0], lat["quantization"]["zero_point"][0], lat["dtype"])
    km = keras_graph(model, pre, GraphSpec("head", "latent", tuple(feature_names(model.config.levels))))
    return {"model": model, "calib": calib, "fx": fx, "head_keras": km, "latents": lats, "latent_range": rng,
            "shipped": {g: (folder / e["file"]).read_bytes() for g, e in fx.graphs.items()},
            "head_converter": convert_int8(km, lambda: iter(lats), "int8", rng)}


def _tensors(flatbuffer: bytes):
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    m = fbu.read_model_from_bytearray(bytearray(flatbuffer))
    return m, m.subgraphs[0].tensors


def test_breakdown_accounts_for_every_byte(exported):
    fb = exported["head_converter"]
    parts = tflite_size_breakdown(fb)
    assert set(parts) == set(CATEGORIES) and sum(parts.values()) == len(fb)
    assert not padding_bytes(fb).any()  # a structure the walk missed would show up as non-zero "padding"
    # The same numbers counted independently from the unpacked model (the converter shares no vector).
    m, tensors = _tensors(fb)
    const = [t for t in tensors if m.buffers[t.buffer].data is not None]
    assert parts["weights_int8"] == sum(int(np.prod(t.shape)) + 4 for t in const if t.type == 9)
    quant = [t.quantization for t in tensors if t.quantization is not None]
    quant = [q for q in quant if q.scale is not None]
    per_channel = [q for q in quant if len(q.scale) > 1]
    assert parts["zero_points_per_channel"] == sum(8 * len(q.zeroPoint) + 4 for q in per_channel)
    assert parts["scales_per_channel"] == sum(4 * len(q.scale) + 4 for q in per_channel)
    names = [t.name for t in tensors] + [sg.name for sg in m.subgraphs]
    assert parts["tensor_names"] == sum(len(n) + 5 for n in names)  # length prefix and NUL
    assert parts["biases_int32"] > 0 and parts["metadata"] > 0 and parts["signature_defs"] > 0
    for graph, shipped in exported["shipped"].items():
        assert sum(tflite_size_breakdown(shipped).values()) == len(shipped), graph
        assert not padding_bytes(shipped).any(), graph
    with pytest.raises(EdgeadError, match="not a TFLite flatbuffer.*TFL3"):
        tflite_size_breakdown(b"PK\x03\x04 not a model at all")


def _outputs(fb: bytes, xnnpack: bool, seed: int = 0) -> dict[str, np.ndarray]:
    runner = TFLiteRunner(fb, xnnpack=xnnpack)
    (name, entry), = runner.inputs.items()
    x = np.random.default_rng(seed).integers(-128, 128, entry["shape"]).astype(entry["dtype"])
    return runner(**{name: x})


def test_compact_is_smaller_and_bit_identical(exported):
    fb = exported["head_converter"]
    small = compact_tflite(fb)
    assert small == exported["shipped"]["head"]  # what export_tflite writes, byte for byte
    notes = exported["fx"].notes
    assert notes["serialisation"] == "compact" and notes["weights"] == "per-channel"
    before, after = tflite_size_breakdown(fb), tflite_size_breakdown(small)
    # All-zero zero-point vectors are written once per length, not once per tensor; names keep the layer only.
    assert after["zero_points_per_channel"] < 0.2 * before["zero_points_per_channel"]
    assert after["tensor_names"] < 0.6 * before["tensor_names"]
    for key in ("weights_int8", "biases_int32", "scales_per_channel", "metadata"):
        assert after[key] <= before[key], key
    assert len(small) < 0.9 * len(fb)
    # Same interpreter I/O (names, shapes, quantisation) and the same bits out, with and without XNNPACK.
    a, b = TFLiteRunner(fb), TFLiteRunner(small)
    assert a.inputs == b.inputs and a.outputs == b.outputs
    for xnnpack in (True, False):
        want, got = _outputs(fb, xnnpack), _outputs(small, xnnpack)
        assert all(np.array_equal(want[k], got[k]) for k in want), xnnpack
    # The model's own inputs and outputs keep their tensor names; internal ones only get shorter, stay unique.
    (m, t_before), (_, t_after) = _tensors(fb), _tensors(small)
    io = set(m.subgraphs[0].inputs) | set(m.subgraphs[0].outputs)
    assert all(t_before[i].name == t_after[i].name for i in io)
    assert all(len(y.name) <= len(x.name) for x, y in zip(t_before, t_after, strict=True))
    assert len({t.name for t in t_after}) == len(t_after)
    assert compact_tflite(small) == small  # a second pass finds nothing left to share or shorten
    for graph, shipped in exported["shipped"].items():
        check_fully_int8(shipped, graph)
        # Buffer data has the schema's 16-byte alignment (int32 biases are read in place on MCUs).
        assert all(off % 16 == 0 for off in buffer_data_offsets(shipped)), graph
        parts = tflite_size_breakdown(shipped)
        assert parts["zero_points_per_channel"] < parts["scales_per_channel"], graph  # unshared: twice as big


def test_mixed_granularity_keeps_activations(exported):
    c = exported
    model, trunk = c["model"], c["fx"].runners["trunk"]
    lat = trunk.outputs["latent"]
    km, lats, rng = c["head_keras"], c["latents"], c["latent_range"]
    mixed = convert_int8(km, lambda: iter(lats), "int8", rng, granularity="mixed")
    check_fully_int8(mixed, "head (mixed)")
    assert all(off % 16 == 0 for off in buffer_data_offsets(mixed))
    pm, pc_tensors = _tensors(c["head_converter"])
    mm, mx_tensors = _tensors(mixed)
    assert len(pc_tensors) == len(mx_tensors)
    n_pointwise = 0
    for a, b in zip(pc_tensors, mx_tensors, strict=True):
        if pm.buffers[a.buffer].data is None:  # activations: quantised exactly as in the per-channel model
            assert np.array_equal(a.quantization.scale, b.quantization.scale) and \
                np.array_equal(a.quantization.zeroPoint, b.quantization.zeroPoint), a.name
        elif a.type == 9 and len(a.shape) == 4:
            pointwise = a.shape[0] > 1 and tuple(a.shape[1:3]) == (1, 1)  # (O,1,1,I): 1x1 conv, not depthwise
            n_pointwise += pointwise
            assert len(b.quantization.scale) == (1 if pointwise else len(a.quantization.scale)), a.name
    assert n_pointwise > 10
    assert tflite_size_breakdown(mixed)["scales_per_channel"] < 0.5 * tflite_size_breakdown(
        c["head_converter"])["scales_per_channel"]
    # The head still reads the per-channel trunk's int8 latent with its exact quantisation.
    head = TFLiteRunner(mixed)
    assert head.inputs["latent"]["quantization"] == lat["quantization"]
    z = trunk(**image_feed(trunk, c["calib"][:1]))["latent"]
    assert set(head(latent=z)) == set(feature_names(model.config.levels))
    with pytest.raises(EdgeadError, match="granularity 'per-row'"):
        convert_int8(km, lambda: iter(lats), "int8", rng, granularity="per-row")


def test_short_tensor_name():
    long = ("head_1/teacher_b14_dw_relu6_1/Relu6;head_1/teacher_b14_dw_1/BiasAdd;head_1/teacher_b14_dw_1/"
            "depthwise;head_1/teacher_b14_dw_1/Squeeze")
    assert short_tensor_name(long, "head_1") == "teacher_b14_dw_relu6/Relu6"
    assert short_tensor_name("teacher_b14_dw_relu6/Relu6", None) == "teacher_b14_dw_relu6/Relu6"  # idempotent
    assert short_tensor_name("arith.constant", "head_1") == "arith.constant"
    assert short_tensor_name("trunk_1/trunk_b5_dw_pad_1/Const", "trunk_1") == "trunk_b5_dw_pad/Const"
