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
