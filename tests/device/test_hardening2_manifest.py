"""Per-task thresholds in the manifest are checked like the top-level calibration (issue 21, cases 60-62).

A NaN or null `task_calibration.per_task.NAME.threshold` used to make `run --task NAME` call every image normal;
"high" or a `task_calibration` that is not an object gave tracebacks. Each is now a UserError naming the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from firmware_sim.errors import UserError
from firmware_sim.manifest import MANIFEST_NAME, load_manifest
from tests.device.test_hardening2_outputs import _artifact

GOOD = {"tasks": ["nut", "7"], "per_task": {"nut": {"threshold": 0.4, "score_mean": 0.1, "score_std": None},
                                            "7": {"threshold": 0.6}}, "task_agnostic": "the top-level one"}


@pytest.fixture
def art(tmp_path) -> Path:
    return _artifact(tmp_path / "art")


def _edit(art: Path, task_calibration) -> None:
    path = art / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["task_calibration"] = task_calibration
    path.write_text(json.dumps(data))  # json.dumps writes NaN as NaN, as a careless edit would


def test_valid_per_task_thresholds_load(art):
    _edit(art, GOOD)
    m = load_manifest(art)
    assert m.tasks == ["nut", "7"] and m.calibration("7")["threshold"] == 0.6
    _edit(art, None)  # an export without per-task thresholds
    assert load_manifest(art).tasks == []


@pytest.mark.parametrize("value,field", [
    ({**GOOD, "per_task": {**GOOD["per_task"], "nut": {"threshold": float("nan")}}},
     "task_calibration.per_task.nut.threshold"),
    ({**GOOD, "per_task": {**GOOD["per_task"], "nut": {"threshold": None}}}, "task_calibration.per_task.nut.threshold"),
    ({**GOOD, "per_task": {**GOOD["per_task"], "nut": {"threshold": "high"}}},
     "task_calibration.per_task.nut.threshold"),
    ({**GOOD, "per_task": {**GOOD["per_task"], "7": {"threshold": 0.6, "score_std": float("inf")}}},
     "task_calibration.per_task.7.score_std"),
    ({**GOOD, "per_task": {**GOOD["per_task"], "nut": 0.4}}, "task_calibration.per_task.nut"),
    ("brick: 0.5", "task_calibration"),
    ({**GOOD, "tasks": "nut"}, "task_calibration.tasks"),
    ({**GOOD, "tasks": ["nut", "pill"]}, "task_calibration.per_task"),
    ({**GOOD, "per_task": [0.4]}, "task_calibration.per_task"),
])
def test_bad_per_task_calibration_names_the_field(art, value, field):
    _edit(art, value)
    with pytest.raises(UserError, match=f"field '{field}'"):
        load_manifest(art)


def test_device_run_with_a_nan_task_threshold_is_a_clear_error(art, tmp_path):
    import subprocess
    import sys

    _edit(art, {**GOOD, "per_task": {**GOOD["per_task"], "nut": {"threshold": float("nan")}}})
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "img.png").write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "firmware_sim", "run", "--artifact", str(art), "--images",
                        str(tmp_path / "img.png"), "--task", "nut"], capture_output=True, text=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not r.stdout
    assert "task_calibration.per_task.nut.threshold" in r.stderr
