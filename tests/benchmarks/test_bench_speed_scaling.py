"""bench_speed and bench_scaling in --quick mode on tiny data (64 px, 1 epoch): the scripts run end to end
on real weights, interpreters and files, and what they write is consistent. Timings are not targets here."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

import bench_scaling
import bench_speed
import summarize
from edgead.errors import EdgeadError

# Trains and exports real models: minutes on a 2-core machine (CI runs it; -m 'not slow' skips it).
pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_speed_quick(tmp_path):
    from edgead.models.cost import detector_cost
    from edgead.models.teacher_student import DetectorConfig, TeacherStudent

    work, out = tmp_path / "work", tmp_path / "out"
    # Two of the three models, onnx only among the interpreter formats and no per-strategy epoch times keep
    # this short (tflite-int8 export and bench_cl_speed --quick have their own tests); PaSTe-MCUNet exercises
    # the trunk + head path, STFPM-ResNet18 the full graph.
    assert bench_speed.main(["--quick", "--models", "stfpm-resnet18,paste-mcunet", "--formats", "torch,onnx",
                             "--skip-strategies", "--work", str(work), "--out-dir", str(out)]) == 0
    d = json.loads((out / "speed_quick.json").read_text())
    assert {"command", "date", "machine"} <= set(d) and "random weights" in d["notes"]
    rows = {(r["key"], r["format"]): r for r in d["rows"]}
    assert set(rows) == {(m, f) for m in ("stfpm-resnet18", "paste-mcunet") for f in ("float torch", "onnx")}

    # A format a model cannot take (no Keras mirror for ResNet18) becomes a row that says why, not a crash.
    info = {**d["models"]["stfpm-resnet18"],
            "exports": {"tflite-int8": bench_speed.export_or_reason(work, "stfpm-resnet18", "tflite-int8")}}
    no = bench_speed.measure("stfpm-resnet18", info, "tflite-int8", work, None)
    assert not no["supported"] and "mcunet-in3 only" in no["reason"] and "p50_ms" not in no
    assert not (work / "art" / "stfpm-resnet18" / "tflite-int8").exists()

    base = rows[("stfpm-resnet18", "float torch")]
    assert base["speedup_vs_base"] == base["rss_vs_base"] == base["size_vs_base"] == 1.0
    for (key, fmt), r in rows.items():
        assert r["supported"] and 0 < r["p50_ms"] <= r["p95_ms"]
        assert r["speedup_vs_base"] > 0
        assert r["speedup_vs_base"] == pytest.approx(base["p50_ms"] / r["p50_ms"])
        assert r["peak_rss_bytes"] >= r["rss_after_load_bytes"] > 0 and r["rss_vs_base"] > 0
        # The reported size is the files on disk that this format loads.
        assert r["file_bytes"] == sum(os.path.getsize(work / r["files_dir"] / f) for f in r["files"]) > 0
        if fmt == "float torch":
            assert r["files"] == ["task_00.pt"] and "torch" in r["host_modules"]
        else:
            # A device process: firmware_sim and an interpreter, never torch / tensorflow / edgead / export.
            assert r["host_modules"] == []
            assert r["files"] == (["trunk.onnx", "head.onnx"] if key == "paste-mcunet" else ["full.onnx"])
    assert rows[("paste-mcunet", "onnx")]["runtime"] == "onnxruntime"

    # MACs are the architecture's, as detector_cost counts them on a freshly built model of the same config.
    for key, (model, backbone) in {"stfpm-resnet18": ("stfpm", "resnet18"),
                                   "paste-mcunet": ("paste", "mcunet-in3")}.items():
        det = DetectorConfig.defaults(model, backbone, image_size=64, pretrained=False)
        macs = detector_cost(TeacherStudent(det, download=False))["macs"]["total"]
        assert d["models"][key]["macs"] == macs
        assert all(r["macs"] == macs for (k, _), r in rows.items() if k == key)
    assert rows[("paste-mcunet", "onnx")]["macs_vs_base"] < 1

    assert d["models"]["paste-mcunet"]["train_epoch_s"] > 0 and d["training_per_strategy"] is None
    assert all({"check", "pass", "detail"} <= set(c) for c in d["checks"])

    table = _csv_rows(out / "speed_quick.csv")
    assert len(table) == len(d["rows"])
    assert {"model", "format", "p50_ms", "file_bytes", "macs"} <= set(table[0])
    assert (out / "speed_quick.png").read_bytes()[:8] == PNG_MAGIC
    # The README renderer reads what the script wrote (here with the not-supported row added).
    (out / "speed_quick.json").write_text(json.dumps({**d, "rows": [*d["rows"], no]}))
    page = summarize.section(out / "speed_quick.json")
    assert "## Speed: speed_quick" in page and "| PaSTe-MCUNet | onnx | onnxruntime |" in page
    assert "| tflite-int8 | n/a | not supported |" in page and "mcunet-in3 only" in page


def test_scaling_quick(tmp_path):
    assert bench_scaling.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "scaling_quick.json").read_text())
    assert {"command", "date", "machine"} <= set(d)
    budget = d["settings"]["budget"]
    assert sorted(s["strategy"] for s in d["streams"]) == ["compressed-replay", "replay"]
    for s in d["streams"]:
        assert s["n_tasks"] == len(s["per_task"]) == 2 and s["tasks"] == ["brick", "grass"]
        assert s["peak_rss_scope"] == "per task"
        for t in s["per_task"]:
            assert 0 < t["buffer_bytes"] <= budget  # never above the budget
            assert t["train_s"] == pytest.approx(t["prepare_s"] + t["epoch_s"])  # 1 epoch
            assert t["eval_s"] > 0 and t["wall_s"] > t["train_s"] and t["peak_rss_bytes"] > 0
            if s["strategy"] == "compressed-replay":
                assert t["buffer_file_bytes"] == t["buffer_bytes"]  # the device file is what is counted
            else:
                assert t["buffer_bytes"] == sum(t["buffer_samples"].values()) * 64 * 64 * 3
        first, last = s["per_task"]
        assert first["replay_per_batch"] == 0 < last["replay_per_batch"]
        assert len(last["buffer_samples"]) == 2  # both tasks share the memory after task 2
        assert last["buffer_bytes"] == s["additional_bytes"]  # as the run's results.json reports it
    # Same byte budget: int8 latents are far smaller than images, so more of them fit.
    by = {s["strategy"]: s["per_task"][-1] for s in d["streams"]}
    per_sample = {k: v["buffer_bytes"] / sum(v["buffer_samples"].values()) for k, v in by.items()}
    assert per_sample["compressed-replay"] < per_sample["replay"] / 4
    assert [c["pass"] for c in d["checks"] if "budget" in c["check"]] == [True]
    assert len(_csv_rows(tmp_path / "scaling_quick.csv")) == 4
    assert (tmp_path / "scaling_quick.png").read_bytes()[:8] == PNG_MAGIC
    page = summarize.section(tmp_path / "scaling_quick.json")
    assert "## Scaling with the number of tasks: scaling_quick" in page and "| replay | 2 |" in page


def test_scaling_task_names_are_distinct_tasks():
    from edgead.data.synth import render_sample

    names = bench_scaling.task_names(12)
    assert len(set(names)) == 12 and names[:4] == ["brick", "grass", "gravel", "nut"]
    # Tasks 7+ reuse a look under another name; the generator draws them differently (name-seeded).
    nut, metal_nut = (render_sample(n, 0, 0, 64, None)[0] for n in ("nut", "metal_nut"))
    assert not np.array_equal(nut, metal_nut)


@pytest.mark.parametrize("main, argv, needle", [
    (bench_speed.main, ["--models", "stfpm-resnet18,vgg"], "--models"),
    (bench_speed.main, ["--models", "paste-mcunet"], "stfpm-resnet18"),
    (bench_speed.main, ["--runs", "0"], "--runs 0: expected at least 1"),
    (bench_scaling.main, ["--tasks", "two"], "--tasks"),
    (bench_scaling.main, ["--strategies", "joint"], "--strategies"),
])
def test_bad_arguments_fail_before_any_work(main, argv, needle, tmp_path):
    with pytest.raises(EdgeadError, match=needle):
        main([*argv, "--out-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())
