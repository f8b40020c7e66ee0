"""The arm64 check's parts that run without an emulated root: the script's refusals (missing host tools with
the apt commands, a folder that is not a bundle), the host-vs-ARM comparison (score differences, flipped
decisions, a bar relative to the threshold) and the device half's input checks. The emulated run itself is a
benchmark (scripts/arm64_check.sh; results in benchmarks/results/arm64_*.json), not a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_sim.errors import UserError
from firmware_sim.predict_batch import load_views

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "arm64_check.sh"


def _run(args: list[str], path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PATH": path} if path is not None else {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def _bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    (b / "artifact").mkdir(parents=True)
    (b / "firmware_sim").mkdir()
    (b / "artifact" / "manifest.json").write_text("{}")
    (b / "requirements-device.txt").write_text("numpy\n")
    return b


def test_missing_host_tools_name_the_apt_commands(tmp_path):
    # A PATH with the shell's basic tools but neither mmdebstrap nor qemu-aarch64-static.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "head", "grep", "cat", "id", "dirname", "pwd"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if found.startswith("/"):
            (bin_dir / tool).symlink_to(found)
    r = _run([str(_bundle(tmp_path))], path=str(bin_dir))
    assert r.returncode == 3, r.stderr
    assert "missing on this host: mmdebstrap" in r.stderr
    for line in ("apt-get update", "apt-get install -y qemu-user-static binfmt-support mmdebstrap",
                 "update-binfmts --enable qemu-aarch64"):
        assert line in r.stderr


def test_refuses_what_is_not_a_bundle(tmp_path):
    r = _run([str(tmp_path)])
    assert r.returncode == 2 and "not a device bundle (expected requirements-device.txt" in r.stderr
    r = _run([str(tmp_path / "nope")])
    assert r.returncode == 2 and "nope: no such folder" in r.stderr
    r = _run([str(_bundle(tmp_path)), "--suite", "jessie"])
    assert r.returncode == 2 and "--suite jessie: expected stable" in r.stderr


def test_views_file_is_checked(tmp_path):
    bad = tmp_path / "v.npy"
    np.save(bad, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(UserError, match=r"v.npy: array uint8 \(2, 8, 8\); expected uint8 views \(N, S, S, 3\)"):
        load_views(bad)
    (tmp_path / "t.npy").write_text("not numpy")
    with pytest.raises(UserError, match="t.npy: not a readable .npy array"):
        load_views(tmp_path / "t.npy")


def test_score_differences_count_flips_against_the_threshold():
    pytest.importorskip("torch")
    from edgead.export.arm64_check import score_differences

    from edgead.data.loading import LoadedSplit
    from firmware_sim.preprocess import Preprocess

    n, s = 4, 16
    split = LoadedSplit(images=np.zeros((n, s, s, 3), np.uint8), masks=np.zeros((n, s, s), bool),
                        labels=np.array([0, 0, 1, 1]), defect_types=["good", "good", "x", "x"],
                        paths=[f"img{i}.png" for i in range(n)])
    pre = Preprocess(image_size=s)
    rng = np.random.default_rng(0)
    maps = rng.random((n, s, s)).astype(np.float32)
    host = {"maps": maps, "scores": np.array([0.20, 0.29, 0.35, 0.50])}
    same = score_differences(split, pre, host, dict(host), threshold=0.3)
    assert same["identical"] and same["decision_flips"] == 0 and same["max_abs_score_diff"] == 0
    arm = {"maps": maps + 1e-3, "scores": host["scores"] + np.array([0.0, 0.02, -0.001, 0.0])}
    d = score_differences(split, pre, host, arm, threshold=0.3)
    assert d["decision_flips"] == 1 and d["flipped"][0]["path"] == "img1.png"  # 0.29 -> 0.31 crosses 0.3
    assert d["max_abs_score_diff"] == pytest.approx(0.02)
    assert d["max_abs_score_diff_of_threshold"] == pytest.approx(0.02 / 0.3)
    assert d["mean_abs_score_diff"] == pytest.approx(0.021 / 4)
    assert d["max_abs_map_diff"] == pytest.approx(1e-3, rel=1e-3) and not d["identical"]


def test_device_half_needs_no_host_packages():
    r = subprocess.run([sys.executable, "-c", "import sys, firmware_sim.predict_batch; "
                        "print([m for m in ('torch', 'tensorflow', 'edgead', 'export') if m in sys.modules])"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
