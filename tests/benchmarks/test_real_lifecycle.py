"""bench real-stream --lifecycle --quick: the stream as a train call, a device hand-off and a learn call, next to
the single call, on generated data (the numbers are not targets: 1 epoch at 64 px)."""

from __future__ import annotations

import json

import pytest

import bench_real_stream as brs


@pytest.mark.slow
def test_lifecycle_quick_runs_every_call_and_the_handoff(tmp_path):
    assert brs.main(["--quick", "--lifecycle", "--out-dir", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "real_lifecycle_quick.json").read_text())
    assert saved["tasks"] == ["brick", "nut"] and saved["method"] == "int8-channel"
    life, single = saved["lifecycle"], saved["single"]
    # train, the device hand-off, learn: three versions, and the matrices have the same shape
    assert [v["tasks"] for v in life["versions"]] == [["brick"], [], ["nut"]]
    assert life["versions"][1]["merged"] == {"brick": 8}
    assert len(life["call_seconds"]) == 3 and len(single["call_seconds"]) == 1
    assert [len(r) for r in life["image_auroc_matrix"]] == [len(r) for r in single["image_auroc_matrix"]]
    assert saved["difference"] == pytest.approx(life["image_auroc"] - single["image_auroc"])
    for after in (life["memory_after_task"], single["memory_after_task"]):
        assert list(after[-1]) == ["brick", "nut"]
    assert life["total_bytes"] <= saved["budget_bytes"] and saved["checks"][0]["check"].startswith("lifecycle")
    # the single call's drift probe: one record per evaluation (task j after task i), its probes under that model
    probe = json.loads((tmp_path / "drift_probe_real_lifecycle_quick.json").read_text())["records"]
    assert [(r["after"], r["task"]) for r in probe] == [(0, 0), (1, 0), (1, 1)]
    for r in probe:
        assert len(r["scores"]) == len(r["labels"]) == len(r["defect_types"]) > 0
        assert len(r["probe_image"]) == len(r["probe_mean"]) == len(r["crop_image"]) == len(r["crop_mean"]) >= 1
        for mean, top in (("probe_mean", "probe_image"), ("crop_mean", "crop_image")):  # a map's mean <= its top
            assert all(m <= s for m, s in zip(r[mean], r[top], strict=True))
    assert probe[0]["drift_ratio"] is None and probe[1]["drift_ratio"] is not None
    # bench_drift replays recalibration rules on that probe: a damped ratio is the geometric mean of keeping the
    # fitted threshold and following the full ratio; a freshly fitted task has every rule at its fitted threshold
    import bench_drift

    assert bench_drift.main([str(tmp_path / "drift_probe_real_lifecycle_quick.json"),
                             "--out", str(tmp_path / "drift.json")]) == 0
    table = bench_drift.evaluate(probe)
    for full, half, fit in zip(table["crop_mean:k2:d1"], table["crop_mean:k2:d0.5"], table["fit"], strict=True):
        assert half["threshold"] == pytest.approx((full["threshold"] * fit["threshold"]) ** 0.5)
        if full["after"] == full["task"]:
            assert full["threshold"] == fit["threshold"]
    saved_drift = json.loads((tmp_path / "drift.json").read_text())
    assert saved_drift["chosen"]["deployable"] and {r["rule"] for r in saved_drift["rules"]} >= {"fit", "oracle"}
