"""The device's buffer end to end: `--keep` (no frame decided anomalous enters the buffer by default), product
names, append-mode writes and one lock through a symlink, on a real tflite-int8 export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_sim.buffer_lock import BufferLock
from firmware_sim.errors import UserError
from firmware_sim.keep_policy import ABOVE_MARGIN, ANOMALOUS, KeepPolicy
from firmware_sim.replay_buffer import ReplayBuffer

pytest.importorskip("ai_edge_litert")

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_keep_policy_parses_and_decides():
    assert KeepPolicy.parse(None) == KeepPolicy("normal") and str(KeepPolicy.parse("margin:0.8")) == "margin:0.8"
    for bad in ("some", "margin:", "margin:0", "margin:1.5", "margin:nan", "margin:-1"):
        with pytest.raises(UserError, match="--keep"):
            KeepPolicy.parse(bad)
    normal, every, margin = KeepPolicy.parse("normal"), KeepPolicy.parse("all"), KeepPolicy.parse("margin:0.5")
    assert normal.refuses(1.1, 1.0) == ANOMALOUS and normal.refuses(1.0, 1.0) is None
    assert every.refuses(9.0, 1.0) is None
    assert margin.refuses(1.1, 1.0) == ANOMALOUS and margin.refuses(0.6, 1.0) == ABOVE_MARGIN
    assert margin.refuses(0.4, 1.0) is None


@pytest.fixture(scope="module")
def art(tiny_host) -> dict:
    """The session's tiny run exported as tflite-int8 + onnx (tests/conftest.py), and every 'nut' image."""
    images = sorted((tiny_host["data"] / "nut").rglob("*.png"))
    return {"art": tiny_host["art"], "images": [p for p in images if "ground_truth" not in p.parts]}


@pytest.mark.slow  # the session fixture trains and exports a model: ~1-3 min on 2 shared cores
def test_default_keep_buffers_no_frame_decided_anomalous(art, tmp_path):
    from firmware_sim.device import Device

    with Device(art["art"], format="tflite-int8") as device:
        scores = [device.infer(p).score for p in art["images"]]
        # A threshold inside the scores, so that both decisions occur (the one-epoch model's own calls
        # everything anomalous); the property holds for whatever threshold the device decides with.
        device.threshold = float(np.median(scores))
        for keep, offered in (("normal", lambda s, t: s <= t), ("margin:0.9", lambda s, t: s < 0.9 * t)):
            path = tmp_path / f"{keep.replace(':', '_')}.bin"
            device.attach_buffer(path, "1MB", task=0, keep=keep)  # room for every frame: nothing sampled out
            results = [device.infer(p) for p in art["images"]]
            device.detach_buffer()
            want = [offered(r.score, device.threshold) for r in results]
            assert 0 < sum(want) < len(results)
            assert [r.stored for r in results] == want
            assert all(not r.stored and r.not_kept == ANOMALOUS for r in results if r.anomalous)
            buf, report = ReplayBuffer.load(path)
            assert report.errors == [] and len(buf) == sum(want)
            assert buf.stats()["offered_per_task"] == {0: sum(want)}  # frames left out are not offered


@pytest.mark.slow
def test_cli_run_summary_counts_what_was_not_kept_and_names_the_task(art, tmp_path):
    buf = tmp_path / "flash" / "b.edgeadrb"
    images = art["images"][0].parent.parent  # nut/train/good and nut/test/...: a folder of folders
    r = subprocess.run([sys.executable, "-m", "firmware_sim", "run", "--artifact", str(art["art"]), "--images",
                        str(images), "--buffer", str(buf), "--budget", "40kB", "--task", "nut"], capture_output=True,
                       text=True, env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    summary = json.loads(r.stderr.strip().splitlines()[-1])["summary"]["buffer"]
    anomalous = sum(x["decision"] == "anomalous" for x in lines)
    assert not any(x["buffered"] for x in lines if x["decision"] == "anomalous")
    assert summary["keep"] == "normal" and summary["not_kept"].get(ANOMALOUS, 0) == anomalous
    assert summary["buffered"] + sum(summary["not_kept"].values()) == len(lines)
    assert summary["task_name"] == "nut" and summary["write_mode"] == "append"
    stats = json.loads(subprocess.run([sys.executable, "-m", "firmware_sim", "buffer", "stats", str(buf)],
                                      capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120).stdout)
    assert stats["task_names"] == {"0": "nut"}


@pytest.mark.slow
def test_a_device_through_a_symlink_takes_the_real_buffers_lock(art, tmp_path):
    from firmware_sim.device import Device

    real, link = tmp_path / "real.bin", tmp_path / "link.bin"
    with Device(art["art"], format="tflite-int8") as device:
        device.attach_buffer(real, "40kB", task=0, keep="all")
        device.detach_buffer()
        os.symlink(real, link)
        with BufferLock(real):
            with pytest.raises(UserError, match="in use"):
                device.attach_buffer(link, keep="all")
        device.attach_buffer(link, keep="all")
        assert device.infer(art["images"][0]).stored
        device.detach_buffer()
    assert link.is_symlink() and len(ReplayBuffer.load(real)[0]) == 1


@pytest.mark.slow
def test_profile_reports_bytes_written_per_1000_frames(art):
    from firmware_sim import commands

    res = commands.profile(art["art"], budget="40kB", runs=1, warmup=0, compare=False)
    w = res["buffer_writes"]
    assert w["frames"] == 1000 and w["bytes_per_1000_frames"] == w["bytes_written"] > 0
    assert w["bytes_per_buffered_frame"] <= w["record_bytes"] + 64 and w["compactions"] == 0
    assert commands.profile(art["art"], runs=1, warmup=0, compare=False)["buffer_writes"] is None  # no budget
