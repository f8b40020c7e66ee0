"""The benchmark scripts' --quick modes run, so they cannot rot (their numbers are not asserted as targets)."""

from __future__ import annotations

import json

import pytest

import bench_cl_speed


def test_cl_speed_quick(tmp_path):
    out = bench_cl_speed.main(["--quick", "--out", str(tmp_path / "speed.json")])
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert set(saved["per_strategy"]) == {"finetune", "replay", "compressed-replay"}
    assert saved["per_strategy"]["compressed-replay"]["replay_per_batch"] > 0
    assert saved["per_strategy"]["finetune"]["additional_bytes"] == 0
    # Same sample count: int8 latents take far fewer bytes than raw images.
    assert (saved["per_strategy"]["compressed-replay"]["additional_bytes"]
            < saved["per_strategy"]["replay"]["additional_bytes"])
    assert out["speedup_compressed_vs_image_replay"] == saved["speedup_compressed_vs_image_replay"] > 0


@pytest.mark.slow
def test_memory_budget_quick(tmp_path):
    import bench_memory_budget

    assert bench_memory_budget.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "memory_budget_quick.json").read_text())
    runs = {(r["method"], r["budget_bytes"]): r for r in saved["runs"]}
    # 8 kB cannot hold one 64x64 image: reported as infeasible, with the reason, not run.
    assert "smaller than one" in runs[("replay", 8000)]["infeasible"]
    for (method, budget), r in runs.items():
        if not r.get("infeasible"):
            assert r["additional_bytes"] <= budget or method == "finetune"
            assert 0.0 <= r["image_auroc"] <= 1.0
    # 1 MB keeps every training latent and image of both tasks: 2 MB copies it instead of training again.
    for method in ("replay", "int8-channel", "int8-device"):
        assert runs[(method, 2_000_000)]["saturated_from"] == 1_000_000
        assert runs[(method, 2_000_000)]["image_auroc"] == runs[(method, 1_000_000)]["image_auroc"]
    # The same samples: int8 latents take far fewer bytes than the raw images they stand for.
    assert runs[("int8-channel", 1_000_000)]["additional_bytes"] < runs[("replay", 1_000_000)]["additional_bytes"] / 4
    assert runs[("int8-device", 8000)]["buffer_samples"] > 0  # the device's int8 latents fit where images cannot
    # The Pareto front: no point has both fewer bytes and a better image AUROC than a front point.
    summary = saved["summary"]
    front = [r for r in summary if r.get("pareto_image_auroc")]
    assert front
    for f in front:
        assert not any(r["additional_bytes"] <= f["additional_bytes"] and r["image_auroc"] > f["image_auroc"]
                       for r in summary)
    assert (tmp_path / "memory_budget_quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = " | ".join(c["check"] for c in saved["checks"])
    assert "best compressed replay >= image replay" in names and "on-device int8 latents" in names


def test_memory_budget_refuses_an_unknown_method(tmp_path, capsys):
    import pytest

    import bench_memory_budget

    with pytest.raises(SystemExit, match="--methods: .*int9"):
        bench_memory_budget.main(["--methods", "replay,int9", "--out-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_metrics_quick(tmp_path):
    import bench_metrics

    assert bench_metrics.main(["--quick", "--out", str(tmp_path / "m.json")]) == 0
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["command"] and saved["date"] and saved["machine"]["cpu_count"] >= 1
    res = saved["results"]
    rows = res.values() if isinstance(res, dict) else res
    assert all(r["best_s"] > 0 and r["peak_extra_bytes"] >= 0 for r in rows)


def test_single_task_quick(tmp_path):
    import bench_single_task

    assert bench_single_task.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "single_task_quick.json").read_text())
    assert saved["complete"] and saved["rows"]
    for r in saved["rows"]:
        assert 0.0 <= r["image_auroc"] <= 1.0 and r["params"] > 0 and r["macs"] > 0 and r["epochs"] == 1
    assert (tmp_path / "single_task_quick.csv").read_text().startswith("dataset,")


def test_cl_quality_quick(tmp_path):
    import bench_cl_quality

    assert bench_cl_quality.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "cl_quality_quick.json").read_text())
    by = {(r["setting"], r["method"]): r for r in saved["summary"]}
    assert by[("none", "finetune")]["additional_bytes"] == 0
    f32, i8 = by[("count", "latent-fp32")], by[("count", "latent-int8-channel")]
    assert f32["buffer_samples"] == i8["buffer_samples"] > 0
    assert 0.2 <= i8["additional_bytes"] / f32["additional_bytes"] <= 0.35  # int8: a quarter of fp32's bytes
    assert saved["checks"]


@pytest.mark.slow
def test_device_quick(tmp_path):
    import bench_device

    res = bench_device.main(["--quick", "--out", str(tmp_path / "device.json")])
    assert res["memory"]["n"] == 200 and not res["memory"]["host_modules"]
    assert {r["format"] for r in res["latency"]} >= {"tflite-int8", "onnx-int8", "onnx", "float torch"}
    assert all(r["p50_ms"] > 0 for r in res["latency"])
    assert json.loads((tmp_path / "device.json").read_text())["checks"][0]["check"] == "memory growth"
