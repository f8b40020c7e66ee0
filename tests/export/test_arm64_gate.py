"""`edgead export --arm64-check`: the ARM run folded into the fidelity gate, and the refusals before any work.

The emulated run itself needs root, qemu-user and a Debian arm64 root (not in CI); what is tested here is the
gate's logic on real arm64_fidelity.json files the check wrote (benchmarks/results/arm64_*.json), the
default export's leave-out rule with ARM drift, and the clear error when the host lacks the tools.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")  # edgead.export imports the host stack

from edgead.export import arm64_check as arm64  # noqa: E402
from edgead.export.drift_advice import ExportContext, drift_message  # noqa: E402
from edgead.export.fidelity import Tolerance  # noqa: E402
from edgead.export.pipeline import ExportOptions, leave_out_drifted  # noqa: E402

from edgead.errors import EdgeadError  # noqa: E402

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _result(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _host_fidelity(formats) -> dict:
    """A host fidelity record in the export's layout, every format within tolerance on the host."""
    ok = {"drift": [], "drift_detail": [], "within_tolerance": True}
    return {"formats": {f: {"trunk+head": dict(ok), "full": dict(ok)} for f in formats}}


def test_arm_drift_past_the_tolerance_is_drift_and_the_numbers_are_recorded():
    res = _result("arm64_int8_battery_weld.json")
    fid = _host_fidelity(res["formats"])
    drifted = arm64.fold_into_fidelity(fid, res, Tolerance())
    tfl = res["formats"]["tflite-int8"]["xnnpack"]["vs_float"]["pixel_auroc"]
    assert tfl["float"] - tfl["format"] > Tolerance().pixel_auroc  # the file holds a real ARM pixel AUROC drop
    assert set(drifted) == {"tflite-int8", "onnx-int8"}
    assert set(drifted["tflite-int8"]) == {"arm64 trunk+head [xnnpack]", "arm64 trunk+head [builtin]"}
    row = drifted["tflite-int8"]["arm64 trunk+head [xnnpack]"][0]
    assert row["metric"] == "pixel AUROC" and row["drop"] == pytest.approx(tfl["float"] - tfl["format"])
    rec = fid["arm64"]["formats"]["tflite-int8"]["xnnpack"]
    assert rec["vs_host"]["max_abs_score_diff"] == res["formats"]["tflite-int8"]["xnnpack"]["vs_host"][
        "max_abs_score_diff"]
    assert rec["vs_host"]["decision_flips"] >= 0 and rec["within_tolerance"] is False
    assert rec["pixel_auroc"]["format"] == tfl["format"]
    # A format that could not run under emulation is reported as skipped, not judged.
    assert "skipped" in fid["arm64"]["formats"]["openvino-int8"]["xnnpack"]
    assert "openvino-int8" not in drifted
    assert fid["arm64"]["suite"] == "stable" and fid["arm64"]["test_images"] == res["test_images"]
    json.dumps(fid)  # fidelity.json must stay writable


def test_the_exports_tolerance_applies_not_the_checks_default():
    res = _result("arm64_int8_battery_weld.json")
    wide = Tolerance(image_auroc=0.2, pixel_auroc=0.2)
    fid = _host_fidelity(res["formats"])
    assert arm64.fold_into_fidelity(fid, res, wide) == {}
    assert all(r.get("within_tolerance", True) for per in fid["arm64"]["formats"].values() for r in per.values())
    # Magnetic-Tile: ARM's AUROCs moved less; with the default gate only formats past it count.
    res = _result("arm64_int8_magnetic_tile.json")
    fid = _host_fidelity(res["formats"])
    drifted = arm64.fold_into_fidelity(fid, res, Tolerance())
    for fmt, per in res["formats"].items():
        for variant, r in per.items():
            if "vs_float" not in r:
                continue
            img, pix = r["vs_float"]["image_auroc"], r["vs_float"]["pixel_auroc"]
            past = img["float"] - img["format"] > 0.02 or pix["float"] - pix["format"] > 0.01
            assert (f"arm64 trunk+head [{variant}]" in drifted.get(fmt, {})) == past


def test_a_default_export_leaves_out_what_drifts_on_arm_only():
    res = _result("arm64_int8_battery_weld.json")
    fid = _host_fidelity(["tflite-int8", "onnx", "onnx-int8"])
    drifted = arm64.fold_into_fidelity(fid, res, Tolerance())
    left = leave_out_drifted(fid, set(drifted))
    assert sorted(left) == ["onnx-int8", "tflite-int8"]
    assert list(fid["formats"]) == ["onnx"] and set(fid["left_out"]) == {"onnx-int8", "tflite-int8"}
    # Every format drifting: none is left out (the export then fails, as a named one does).
    fid = _host_fidelity(["tflite-int8", "onnx-int8"])
    assert leave_out_drifted(fid, set(drifted)) == [] and "left_out" not in fid


def test_a_named_formats_message_names_the_arm_path():
    res = _result("arm64_int8_battery_weld.json")
    drifted = arm64.fold_into_fidelity(_host_fidelity(res["formats"]), res, Tolerance())
    lines = arm64.drift_lines(drifted)
    assert any(x.startswith("tflite-int8 (arm64 trunk+head [builtin]): pixel AUROC") for x in lines)
    msg = drift_message(drifted, ExportContext(32, 33, "per-channel", 20, 12))
    assert "tflite-int8 (arm64 trunk+head [xnnpack]): pixel AUROC fell" in msg


def _tool(folder: Path, name: str) -> None:
    f = folder / name
    f.write_text("#!/bin/sh\nexit 0\n")
    f.chmod(0o755)


def test_missing_tools_give_the_apt_commands(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(EdgeadError) as e:
        arm64.require_tools(path=str(empty), binfmt=tmp_path / "no-binfmt", helper=tmp_path / "no-helper")
    msg = str(e.value)
    assert "missing on this host: mmdebstrap, qemu-user-static, binfmt entry qemu-aarch64" in msg
    for line in arm64.APT_COMMANDS:
        assert line in msg
    # A disabled binfmt entry counts as missing too.
    _tool(empty, "mmdebstrap")
    _tool(empty, "qemu-aarch64-static")
    (tmp_path / "binfmt").write_text("disabled\ninterpreter /x\n")
    assert arm64.missing_tools(str(empty), tmp_path / "binfmt", tmp_path / "no-helper") == [
        "binfmt entry qemu-aarch64"]


def test_tools_present_but_not_root(tmp_path):
    _tool(tmp_path, "mmdebstrap")
    _tool(tmp_path, "qemu-aarch64-static")
    (tmp_path / "binfmt").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n")
    assert arm64.missing_tools(str(tmp_path), tmp_path / "binfmt") == []
    with pytest.raises(EdgeadError, match="needs root"):
        arm64.require_tools(path=str(tmp_path), binfmt=tmp_path / "binfmt", root=False)


def test_the_option_is_off_by_default_and_the_result_survives_a_copy():
    opts = ExportOptions()
    assert opts.arm64_check is False and opts.arm64_images is None
    res = _result("arm64_int8_magnetic_tile.json")
    before = copy.deepcopy(res)
    arm64.fold_into_fidelity(_host_fidelity(res["formats"]), res, Tolerance())
    assert res == before  # the check's own file is not modified by folding it in
