"""The runtime table (firmware_sim.runtimes): every runtime behind one protocol, formats mapped to exactly one
runtime, requirements per runtime (with the Coral pin), interpreters imported only when a model is opened, and
clear errors for unknown formats and incomplete OpenVINO IRs. Fast: no model is trained here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from firmware_sim.errors import UserError
from firmware_sim.requirements import device_requirements
from firmware_sim.runtimes import RUNTIMES, Runner, formats, open_runner, runtime_for

ROOT = Path(__file__).resolve().parents[2]


def _resolved(text: str, python: str, machine: str) -> dict[str, str]:
    """{package: specifier} that pip would install from a requirements text on (python, machine)."""
    env = {"python_version": python, "platform_machine": machine, "python_full_version": python + ".0"}
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or Marker(str(req.marker)).evaluate(env):
            out[req.name] = str(req.specifier)
    return out


def test_each_format_has_exactly_one_runtime_with_the_protocol():
    fmts = formats()
    assert len(fmts) == len(set(fmts))  # no format claimed twice
    assert {"tflite-int8", "onnx", "onnx-int8", "openvino", "openvino-int8"} <= set(fmts)
    for rt in RUNTIMES:
        assert rt.name and rt.formats and rt.requirements and rt.layout in ("NHWC", "NCHW")
        assert callable(getattr(rt, "open", None)) and callable(getattr(rt, "arena_bytes", None))
        for f in rt.formats:
            assert runtime_for(f) is rt
    assert runtime_for("openvino-int8").name == "openvino"
    with pytest.raises(UserError, match=r"format 'tensorrt': no runtime runs it \(known formats: tflite-int8"):
        runtime_for("tensorrt")


def test_requirements_come_from_each_formats_runtime():
    pi = ("3.11", "aarch64")
    assert set(_resolved(device_requirements(["tflite-int8"]), *pi)) == {"numpy", "pillow", "ai-edge-litert"}
    assert set(_resolved(device_requirements(["onnx-int8"]), *pi)) == {"numpy", "pillow", "onnxruntime"}
    ov = _resolved(device_requirements(["tflite-int8", "openvino-int8", "openvino"]), *pi)
    assert set(ov) == {"numpy", "pillow", "ai-edge-litert", "openvino"}
    assert "openvino" not in _resolved(device_requirements(["openvino"]), "3.11", "armv7l")  # no armv7l wheel


def test_edgetpu_bundle_pins_the_coral_compatible_interpreter():
    text = device_requirements(["tflite-int8", "onnx"], edgetpu=True)
    bookworm = _resolved(text, "3.11", "aarch64")
    # libedgetpu pairs with tflite-runtime 2.14 on Bookworm; ai-edge-litert (a later TFLite) must not be there,
    # or firmware_sim would load it next to libedgetpu.
    assert bookworm["tflite-runtime"] == "==2.14.0" and "ai-edge-litert" not in bookworm
    assert bookworm["numpy"] == "<2,>=1.23.2"  # tflite-runtime 2.14 is built against numpy 1
    assert "onnxruntime" in bookworm
    trixie = _resolved(text, "3.13", "aarch64")  # no tflite-runtime wheel for 3.13: CPU LiteRT only
    assert "tflite-runtime" not in trixie and "ai-edge-litert" in trixie
    assert "Edge TPU" in text and "libedgetpu" in text
    assert "tflite-runtime" not in _resolved(device_requirements(["tflite-int8"]), "3.11", "aarch64")


def test_interpreters_load_only_when_a_model_is_opened():
    code = textwrap.dedent("""
        import sys
        import firmware_sim.runtimes, firmware_sim.runtime, firmware_sim.device
        heavy = [m for m in ("onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime", "tensorflow", "torch")
                 if m in sys.modules]
        print(heavy)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_openvino_ir_without_its_weights_is_a_clear_error(tmp_path):
    pytest.importorskip("openvino")
    xml = tmp_path / "full.openvino.xml"
    xml.write_text("<net/>")
    with pytest.raises(UserError, match=r"full.openvino.xml: an OpenVINO IR needs full.openvino.xml and "
                                        r"full.openvino.bin side by side"):
        open_runner("openvino", xml)
    xml.with_suffix(".bin").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="full.openvino.xml: OpenVINO cannot load it"):
        open_runner("openvino", xml)


def test_delegates_are_refused_outside_tflite(tmp_path):
    with pytest.raises(UserError, match="--delegate applies to the tflite-int8 format only"):
        open_runner("onnx", tmp_path / "x.onnx", delegates=[object()])


def test_runners_satisfy_the_protocol(tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    # A one-node ONNX graph (image -> image + 1) is enough to check the protocol on a real session.
    node = helper.make_node("Add", ["image", "one"], ["out"])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 2, 2])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 2, 2])], [one])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    runner = open_runner("onnx", path, threads=1)
    assert isinstance(runner, Runner)
    assert runner.inputs["image"]["shape"] == [1, 3, 2, 2] and runner.outputs["out"]["dtype"] == "float32"
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    assert np.array_equal(runner(image=x)["out"], x + 1)
    pytest.importorskip("openvino")
    import openvino as ov

    ov.save_model(ov.convert_model(str(path)), str(tmp_path / "add.openvino.xml"), compress_to_fp16=False)
    ovr = open_runner("openvino", tmp_path / "add.openvino.xml", threads=1)
    assert isinstance(ovr, Runner) and ovr.module == "openvino"
    assert ovr.inputs["image"]["shape"] == [1, 3, 2, 2] and np.array_equal(ovr(image=x)["out"], x + 1)
