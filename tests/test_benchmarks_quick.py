"""The benchmark scripts' --quick modes run, so they cannot rot (their numbers are not asserted as targets)."""

from __future__ import annotations

import json

from benchmarks import bench_cl_speed


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


def test_memory_budget_quick(tmp_path):
    from benchmarks import bench_memory_budget

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
    front = [r for r in saved["summary"] if r.get("pareto_image_auroc")]
    assert front and min(r["additional_bytes"] for r in front) == min(r["additional_bytes"] for r in saved["summary"])
    assert (tmp_path / "memory_budget_quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {c["check"].split(" (")[0] for c in saved["checks"]}  # the head-to-head at the reference budget ran
