"""`--tflite-activations int16` (16x8: int16 activations, int8 weights): a real conversion of a small Keras
conv net through export/tflite.convert_int8, then LiteRT's kernel families on it.

What the option is for: the int8 graphs' scores differ between kernel families (XNNPACK, built-in, reference;
x86 and ARM builds) because one-LSB rounding differences are carried through every layer. With int16
activations every family runs TFLite's own integer kernels and agrees to a fraction of an 8-bit step.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
lite = pytest.importorskip("ai_edge_litert.interpreter")

from edgead.export.tflite import check_fully_int8, convert_int8, import_tensorflow  # noqa: E402

from edgead.errors import EdgeadError  # noqa: E402


def _net():
    import_tensorflow()
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((24, 24, 3), batch_size=1, name="image")
    x = keras.layers.Rescaling(1 / 64.0, offset=-2.0)(inp)
    for i, c in enumerate((16, 24, 32, 32)):
        x = keras.layers.Conv2D(c, 3, padding="same", activation="relu6", name=f"c{i}")(x)
        x = keras.layers.DepthwiseConv2D(3, padding="same", name=f"d{i}")(x)
    out = keras.layers.Conv2D(16, 1, name="feat")(x)
    return keras.Model(inp, {"feat": out})


def _samples(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (1, 24, 24, 3)).astype(np.float32) for _ in range(n)]


def _run(fb: bytes, kind, xs) -> list[np.ndarray]:
    it = lite.Interpreter(model_content=fb, num_threads=1, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    r = it.get_signature_runner("serving_default")
    d = r.get_input_details()["image"]
    sc, zp = d["quantization_parameters"]["scales"][0], d["quantization_parameters"]["zero_points"][0]
    info = np.iinfo(d["dtype"])
    out = []
    for x in xs:
        q = np.clip(np.round(x / sc) + zp, info.min, info.max).astype(d["dtype"])
        o = r(image=q)["feat"]
        od = r.get_output_details()["feat"]["quantization_parameters"]
        out.append((o.astype(np.float64) - od["zero_points"][0]) * od["scales"][0])
    return out


@pytest.fixture(scope="module")
def graphs():
    net = _net()
    cal = _samples(16, 0)
    return {a: convert_int8(net, lambda: iter(cal), "int8", (0.0, 255.0), "per-channel", a)
            for a in ("int8", "int16")}


def test_int16_graph_is_integer_with_int16_io(graphs):
    fb = graphs["int16"]
    check = check_fully_int8(fb, "net")  # no float tensor, no DEQUANTIZE
    assert check["tensor_types"].get("INT16", 0) > 0
    it = lite.Interpreter(model_content=fb)
    assert it.get_input_details()[0]["dtype"] == np.int16
    assert it.get_input_details()[0]["quantization_parameters"]["zero_points"][0] == 0  # symmetric


def test_kernel_families_agree_far_better_with_int16_activations(graphs):
    xs = _samples(6, 1)
    spread = {}
    for a, fb in graphs.items():
        ref = _run(fb, lite.OpResolverType.BUILTIN_REF, xs)
        opt = _run(fb, lite.OpResolverType.BUILTIN, xs)  # XNNPACK where it takes the graph
        scale = max(float(np.abs(r).max()) for r in ref)
        spread[a] = max(float(np.abs(o - r).max()) for o, r in zip(opt, ref, strict=True)) / scale
    # int8: one-LSB differences carried through the layers; int16: a small fraction of an int8 step.
    assert spread["int16"] < 1 / 256
    assert spread["int16"] < spread["int8"] / 4 or spread["int8"] == 0


def test_unknown_activation_width_is_refused():
    with pytest.raises(EdgeadError, match="activations 'int4': expected one of int8, int16"):
        convert_int8(None, lambda: iter(()), "int8", (0.0, 255.0), "per-channel", "int4")
