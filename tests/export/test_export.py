"""`edgead export` end to end on a tiny trained PaSTe-MCUNet run: formats, int8 check, manifest, fidelity,
agreement with the float model, bad input and interruption.

One session run (64 px synthetic data, 2 epochs; tests/conftest.py, shared with test_openvino) and one full
export serve most tests, to keep the file well under 90 s on a 2-core machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from edgead.export import pipeline
from edgead.export.pipeline import ExportDrift, ExportOptions, export_run, load_run
from edgead.export.tflite import inspect

from edgead.engine.tensors import to_input
from edgead.errors import EdgeadError
from firmware_sim import anomaly_map as amap_np
from firmware_sim.errors import UserError
from firmware_sim.manifest import load_manifest
from firmware_sim.preprocess import load_rgb
from firmware_sim.runtime import OnnxRunner, TFLiteRunner, dequantize, image_feed
from tests.conftest import export_test_run

# Trains and exports real models: minutes on a 2-core machine (CI runs it; -m 'not slow' skips it).
pytestmark = pytest.mark.slow

SIZE = 64



@pytest.fixture(scope="module")
def paste_run(tmp_path_factory) -> Path:
    return export_test_run(tmp_path_factory)["run"]  # shared with test_openvino (tests/conftest.py): read-only


@pytest.fixture(scope="module")
def exported(paste_run, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("art") / "art"
    result = export_run(paste_run, out, ExportOptions(calibration=16, allow_drift=True))
    return out, result


def test_layout_and_manifest_verifies(exported):
    out, result = exported
    names = sorted(p.name for p in out.iterdir())
    for fmt_suffix in (".int8.tflite", ".onnx", ".int8.onnx"):
        for g in ("trunk", "head", "full"):
            assert g + fmt_suffix in names
    assert "manifest.json" in names and "fidelity.json" in names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    m = load_manifest(out)
    assert m.model == "paste" and m.backbone == "mcunet-in3" and m.levels == [6, 10, 14] and m.image_size == SIZE
    assert m.preprocess.image_size == SIZE
    assert np.isfinite(m.threshold)
    lat = m.latent("tflite-int8")
    assert lat["dtype"] == "int8" and lat["layout"] == "NHWC" and len(lat["quantization"]["scale"]) == 1
    head_in = m.graph("tflite-int8", "head")["inputs"][0]
    assert head_in["quantization"] == lat["quantization"]  # the buffer's bytes feed the head unchanged
    assert m.data["formats"]["tflite-int8"]["latent_shared_quantization"] is True
    assert m.data["input"]["quantization"]["tflite-int8"] == {"scale": [1.0], "zero_point": [-128], "axis": None}
    assert m.data["cost"]["params"]["total"] > 0 and m.data["cost"]["macs"]["total"] > 0
    assert {"torch", "numpy", "onnxruntime", "ai-edge-litert"} <= set(m.data["tools"])
    head = m.graph("tflite-int8", "head")
    assert [o["name"] for o in head["outputs"]] == ["teacher_6", "student_6", "teacher_10", "student_10",
                                                     "teacher_14", "student_14"]
    assert all(o["quantization"] is not None and o["dtype"] == "int8" for o in head["outputs"])


def test_tampered_or_missing_file_refused(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    blob = bytearray((copy / "head.int8.tflite").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "head.int8.tflite").write_bytes(bytes(blob))
    with pytest.raises(UserError, match="head.int8.tflite"):
        load_manifest(copy)
    shutil.copy(out / "head.int8.tflite", copy / "head.int8.tflite")
    load_manifest(copy)
    (copy / "trunk.onnx").write_bytes(b"")
    with pytest.raises(UserError, match="trunk.onnx"):
        load_manifest(copy, verify=True)
    data = json.loads((out / "manifest.json").read_text())
    data["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="schema version"):
        load_manifest(copy)


def test_tflite_bodies_are_fully_int8(exported):
    out, result = exported
    for g in ("trunk", "head", "full"):
        info = inspect((out / f"{g}.int8.tflite").read_bytes())
        types = {t["type"] for t in info["tensors"]}
        assert types <= {"INT8", "INT32"}, (g, types)
        assert "DEQUANTIZE" not in info["ops"] and "QUANTIZE" not in info["ops"]
        runner = TFLiteRunner(out / f"{g}.int8.tflite")
        assert all(e["shape"][0] == 1 for e in [*runner.inputs.values(), *runner.outputs.values()])


def _torch_maps(run_dir: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    run = load_run(run_dir, None)
    with torch.no_grad():
        x = to_input(images, run.pre)
        maps, _ = run.model.predict(x)
        lat = run.model.latent(x)
    return maps.numpy(), lat.numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _features(runner, out: dict, levels: list[int]) -> tuple[list, list]:
    t = [dequantize(out[f"teacher_{lv}"], runner.outputs[f"teacher_{lv}"]) for lv in levels]
    s = [dequantize(out[f"student_{lv}"], runner.outputs[f"student_{lv}"]) for lv in levels]
    return t, s


def test_interpreters_match_float_torch(exported, paste_run):
    out, _ = exported
    m = load_manifest(out)
    data = Path(json.loads((paste_run / "results.json").read_text())["config"]["data_root"])
    files = sorted((data / "nut" / "test").rglob("*.png"))[::4][:4]
    images = np.stack([m.preprocess.resize_uint8(load_rgb(f)) for f in files])
    want_maps, want_lat = _torch_maps(paste_run, images)
    for fmt, cls, min_cos in (("tflite-int8", TFLiteRunner, 0.97), ("onnx-int8", OnnxRunner, 0.97),
                              ("onnx", OnnxRunner, 0.99999)):
        full = cls(m.graph_path(fmt, "full"))
        trunk, head = cls(m.graph_path(fmt, "trunk")), cls(m.graph_path(fmt, "head"))
        for i in range(len(images)):
            t, s = _features(full, full(**image_feed(full, images[i:i + 1])), m.levels)
            got = amap_np.anomaly_map(t, s, m.image_size, layout=full.layout)[0]
            assert _cos(got, want_maps[i]) > min_cos, (fmt, i, _cos(got, want_maps[i]))
            # trunk -> head, with the trunk's raw output fed to the head (int8 bytes for TFLite)
            z = trunk(**image_feed(trunk, images[i:i + 1]))["latent"]
            t, s = _features(head, head(latent=z), m.levels)
            got = amap_np.anomaly_map(t, s, m.image_size, layout=head.layout)[0]
            assert _cos(got, want_maps[i]) > min_cos, (fmt, i, _cos(got, want_maps[i]))
            zf = dequantize(z, trunk.outputs["latent"])
            zf = zf.transpose(0, 3, 1, 2) if trunk.layout == "NHWC" else zf
            assert _cos(zf, want_lat[i:i + 1]) > (0.97 if "int8" in fmt else 0.99999), fmt


def test_fidelity_report(exported):
    out, result = exported
    fid = json.loads((out / "fidelity.json").read_text())
    assert set(fid["formats"]) == {"tflite-int8", "onnx", "onnx-int8"}
    for per in fid["formats"].values():
        assert set(per) == {"trunk+head", "full"}
        for r in per.values():
            for key in ("image_auroc", "pixel_auroc"):
                assert set(r[key]) == {"float", "format", "delta"}
            assert {"score_pearson", "score_spearman", "map_cosine_mean", "map_cosine_min", "latent",
                    "latency_ms_per_image", "drift", "within_tolerance"} <= set(r)
        assert per["trunk+head"]["latent"]["relative_l2_mean"] >= 0
        assert per["full"]["latent"] is None
    onnx = fid["formats"]["onnx"]["trunk+head"]
    assert onnx["map_cosine_min"] > 0.99999 and abs(onnx["image_auroc"]["delta"]) < 1e-9


def test_bad_inputs_are_clear_errors(paste_run, tmp_path):
    out = tmp_path / "art"
    with pytest.raises(EdgeadError, match="unknown format"):
        export_run(paste_run, out, ExportOptions(formats=["tflite-int8", "coreml"]))
    with pytest.raises(EdgeadError, match="run folder not found"):
        export_run(tmp_path / "nope", out, ExportOptions())
    with pytest.raises(EdgeadError, match="--task 3"):
        export_run(paste_run, out, ExportOptions(task=3))
    with pytest.raises(EdgeadError, match="--tflite-weights 'per-row'"):
        export_run(paste_run, out, ExportOptions(tflite_weights="per-row"))
    with pytest.raises(EdgeadError, match="--calibration 0"):  # fewer images than asked: tests/export/test_export_calibration.py
        export_run(paste_run, out, ExportOptions(formats=["onnx"], calibration=0))
    # A corrupt checkpoint, and one that is not the model the run says.
    bad = tmp_path / "badrun"
    shutil.copytree(paste_run, bad)
    (bad / "checkpoints" / "task_00.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeadError, match="not a readable edgead checkpoint"):
        export_run(bad, out, ExportOptions())
    res = json.loads((paste_run / "results.json").read_text())
    res["config"]["detector"]["model"] = "stfpm"
    res["config"]["detector"]["bootstrap"] = None
    shutil.copy(paste_run / "checkpoints" / "task_00.pt", bad / "checkpoints" / "task_00.pt")
    (bad / "results.json").write_text(json.dumps(res))
    with pytest.raises(EdgeadError, match="not the requested 'stfpm'"):
        export_run(bad, out, ExportOptions())
    (bad / "results.json").write_text("{broken")
    with pytest.raises(EdgeadError, match="results.json: not readable JSON"):
        export_run(bad, out, ExportOptions())
    assert not out.exists()


def test_interrupted_export_leaves_nothing(paste_run, tmp_path, monkeypatch):
    out = tmp_path / "art"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "reference", boom)  # after the models are written, before the manifest
    with pytest.raises(KeyboardInterrupt):
        export_run(paste_run, out, ExportOptions(formats=["onnx"], calibration=8))
    assert list(tmp_path.iterdir()) == []


def test_drift_refuses_to_publish_and_cli(paste_run, exported, tmp_path):
    from click.testing import CliRunner

    from edgead.cli.export import export_cmd

    out = tmp_path / "art"
    # A tolerance no format can meet (an AUROC gain of 1 required) stands in for a drifting model.
    r = CliRunner().invoke(export_cmd, ["--run", str(paste_run), "--format", "onnx", "--calibration", "8",
                                        "--out", str(out), "--quiet", "--max-image-auroc-drop", "-1",
                                        "--max-pixel-auroc-drop", "-1"])
    assert isinstance(r.exception, ExportDrift) and "--allow-drift" in str(r.exception)
    assert "DRIFT" in r.output and "onnx" in r.output  # the summary is still shown
    assert not out.exists()
    report = json.loads((tmp_path / "art.fidelity-failed.json").read_text())
    assert report["within_tolerance"] is False
    r = CliRunner().invoke(export_cmd, ["--run", str(paste_run), "--format", "bogus", "--out", str(out)])
    assert isinstance(r.exception, EdgeadError) and "unknown format" in str(r.exception)
    r = CliRunner().invoke(export_cmd, ["--run", str(paste_run), "--out", str(exported[0])])
    assert isinstance(r.exception, EdgeadError) and "already exists" in str(r.exception)


def test_uint8_io_keeps_latent_shared(paste_run, exported, tmp_path):
    out = tmp_path / "u8"
    result = export_run(paste_run, out, ExportOptions(formats=["tflite-int8"], calibration=16, io="uint8",
                                                      allow_drift=True))
    m = load_manifest(out)
    lat, head_in = m.latent("tflite-int8"), m.graph("tflite-int8", "head")["inputs"][0]
    assert lat["dtype"] == head_in["dtype"] == "uint8" and lat["quantization"] == head_in["quantization"]
    assert m.data["input"]["quantization"]["tflite-int8"] == {"scale": [1.0], "zero_point": [0], "axis": None}
    # Same arithmetic as the int8 export up to the I/O offset of 128.
    u8 = result["fidelity"]["formats"]["tflite-int8"]["trunk+head"]
    i8 = exported[1]["fidelity"]["formats"]["tflite-int8"]["trunk+head"]
    assert abs(u8["map_cosine_mean"] - i8["map_cosine_mean"]) < 1e-3


def test_quant_range_matches_dtype():
    from edgead.export.tflite import quant_range

    assert quant_range(0.5, -128, "int8") == (0.0, 127.5)
    assert quant_range(0.5, 10, "uint8") == (-5.0, 122.5)



def test_default_formats_leave_out_a_drifting_one_and_named_formats_keep_the_gate(paste_run, exported, tmp_path):
    # The tolerance is set between the formats' measured pixel AUROC drops (the export is deterministic: same
    # seed, same calibration images), so exactly the formats above it drift.
    _, result = exported
    drops = {f: max(-r["pixel_auroc"]["delta"] for r in per.values()) for f, per in result["fidelity"]["formats"].items()}
    lo, hi = min(drops.values()), max(drops.values())
    assert hi > lo, drops
    tol = (lo + hi) / 2
    drifting = {f for f, d in drops.items() if d > tol}
    warnings = []
    out = export_run(paste_run, tmp_path / "art", ExportOptions(calibration=16, tolerance=pipeline.Tolerance(1.0, tol)),
                     warn=warnings.append)
    assert set(out["manifest"]["formats"]) == set(drops) - drifting
    assert set(out["fidelity"]["left_out"]) == drifting and out["fidelity"]["within_tolerance"]
    assert len(warnings) == len(drifting) and all("left out" in w for w in warnings)
    for f in drifting:  # its files are not published
        assert not (tmp_path / "art" / f"full{pipeline.FILE_SUFFIX[f]}").exists()
    # Named: the strict gate. A format within the tolerance named with the most drifting one (not all three
    # again: each conversion costs tens of seconds) must refuse the export, not leave the drifting one out.
    named = sorted({min(drops, key=drops.get), max(drops, key=drops.get)})
    with pytest.raises(ExportDrift):
        export_run(paste_run, tmp_path / "art2", ExportOptions(formats=named, calibration=16,
                                                               tolerance=pipeline.Tolerance(1.0, tol)))
    assert not (tmp_path / "art2").exists()
