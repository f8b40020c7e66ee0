"""A sweep rerun after its input files changed runs again (issue 21, probe case 48).

`bench real-stream` into the same --out after the input images changed used to say "6 of 6 runs already
finished ... running 0" and republish the old data's results: run keys held paths, not content. A run's spec
now holds a digest of its inputs' file names, sizes and modification times.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgead.errors import EdgeadError
from edgead.sweep import Run, content_digest, run_sweep
from firmware_sim.outputs import read_marker


def mean_pixel(data: str) -> dict:
    """A sweep run: the mean pixel value of the PNG images under ``data`` (reads every file)."""
    values = [np.asarray(Image.open(p)).mean() for p in sorted(Path(data).rglob("*.png"))]
    return {"images": len(values), "mean": float(np.mean(values))}


def _data(root: Path, value: int) -> Path:
    for i in range(3):
        (root / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), value + i, np.uint8)).save(root / "good" / f"{i:03d}.png")
    return root


def _sweep(data: Path, out: Path, logs: list[str]):
    runs = [Run("mean", f"{__name__}:mean_pixel", {"data": str(data)}, inputs=(str(data),))]
    return run_sweep("t", runs, out, progress=False, log=logs.append)


def test_changed_inputs_run_again_unchanged_ones_are_reused(tmp_path):
    data, out, logs = _data(tmp_path / "data", 10), tmp_path / "sweep", []
    first = _sweep(data, out, logs)
    assert first.results["mean"] == {"images": 3, "mean": 11.0} and read_marker(out) == "bench"
    assert _sweep(data, out, logs).skipped == ["mean"]  # nothing changed: reused
    _data(data, 100)  # the same file names, new images
    second = _sweep(data, out, logs)
    assert second.skipped == [] and second.results["mean"] == {"images": 3, "mean": 101.0}
    (data / "good" / "003.png").write_bytes((data / "good" / "000.png").read_bytes())  # one image more
    assert _sweep(data, out, logs).results["mean"]["images"] == 4


def test_digest_sees_names_sizes_and_times(tmp_path):
    data = _data(tmp_path / "d", 0)
    d0 = content_digest(data)
    assert content_digest(data) == d0 and content_digest(tmp_path / "nothing") == "missing"
    p = data / "good" / "000.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert content_digest(data) != d0
    assert content_digest(p) != content_digest(data / "good" / "001.png")


def test_dotdot_sweep_folder_is_checked_as_the_folder_it_names(tmp_path):
    x = tmp_path / "x"
    (x / "runs").mkdir(parents=True)
    (x / "runs" / "mean.json").write_text("my notes\n")
    with pytest.raises(EdgeadError, match="not empty and holds no sweep.json"):
        _sweep(_data(tmp_path / "data", 10), x / "nosub" / "..", [])
    assert (x / "runs" / "mean.json").read_text() == "my notes\n" and not (x / "nosub").exists()
