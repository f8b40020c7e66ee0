"""Per-task thresholds on the device: the manifest carries them, `run --task NAME` decides with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from firmware_sim.manifest import load_manifest  # noqa: E402
from tests.conftest import two_task_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _fw(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware_sim", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def two_task_art(tmp_path_factory) -> dict:
    """'nut' then 'brick' trained 1 epoch at 64 px with held-out images for per-task thresholds, exported to
    ONNX: the session's (tests/conftest.py), with the run's results.json."""
    art = two_task_onnx(tmp_path_factory)
    return {**art, "results": json.loads((art["run"] / "results.json").read_text())}


def test_manifest_carries_every_tasks_threshold(two_task_art):
    m = load_manifest(two_task_art["art"])
    per = two_task_art["results"]["calibration"]["per_task"]
    assert m.tasks == ["nut", "brick"]
    for name in m.tasks:
        assert m.calibration(name)["threshold"] == pytest.approx(per[name]["threshold"])
    assert m.threshold == pytest.approx(max(per[n]["threshold"] for n in per))  # the task-agnostic one
    assert "per_task" not in m.data["calibration"]["extra"]


def test_run_task_name_uses_that_tasks_threshold(two_task_art):
    m = load_manifest(two_task_art["art"])
    images = two_task_art["data"] / "nut" / "test"
    for task, want in (("nut", m.calibration("nut")["threshold"]), (None, m.threshold)):
        r = _fw("run", "--artifact", two_task_art["art"], "--images", images, *(["--task", task] if task else []))
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stderr.strip().splitlines()[-1])["summary"]
        assert summary["threshold"] == pytest.approx(want) and summary["task"] == task
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        assert lines and all((x["decision"] == "anomalous") == (x["score"] > want) for x in lines)


def test_unknown_task_lists_the_tasks(two_task_art, tmp_path):
    r = _fw("run", "--artifact", two_task_art["art"], "--images", two_task_art["data"] / "nut" / "test",
            "--task", "screw")
    assert r.returncode == 2
    assert "error: --task 'screw': not a task of" in r.stderr and "its tasks: nut, brick" in r.stderr
    assert "Traceback" not in r.stderr
    r = _fw("run", "--artifact", two_task_art["art"], "--images", two_task_art["data"] / "nut" / "test",
            "--task", "1")
    assert r.returncode == 2 and "integer --task apply to a replay buffer" in r.stderr


@pytest.mark.slow  # a tflite-int8 export (the buffer keeps the int8 trunk's output): ~40 s
def test_task_name_with_a_buffer_keeps_records_under_its_index(two_task_art, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edgead.export.pipeline import ExportOptions, export_run

    from firmware_sim.replay_buffer import ReplayBuffer

    art = tmp_path / "art"
    export_run(two_task_art["run"], art, ExportOptions(formats=["tflite-int8"], calibration=8, allow_drift=True))
    buf = tmp_path / "b.bin"
    r = _fw("run", "--artifact", art, "--images", two_task_art["data"] / "brick" / "train" / "good",
            "--buffer", buf, "--budget", "20KB", "--task", "brick")
    assert r.returncode == 0, r.stderr
    assert ReplayBuffer.load(buf)[0].tasks == [1]
