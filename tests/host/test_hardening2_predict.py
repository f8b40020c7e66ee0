"""`predict` / `device run` outputs (issue 21, probe cases 22, 23 and the "a file: ..." write errors).

Overlays of `a.png` and `a.jpg`, or `x/y.png` and `x__y.png`, used to share one file: the second overwrote the
first and both JSON lines named the survivor. `predict --checkpoint 7` named `--task` in its error. A write that
failed for lack of room said "a file: File too large" without the file. Host and device draw overlays with the
same code (firmware_sim.commands.score_files), so the host run here checks both.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgead.errors import EdgeadError
from edgead.predict import predict_run
from firmware_sim.overlay import OverlayNames
from tests.conftest import ROOT, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)["run"]  # the session's tiny run (tests/conftest.py)


def _images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    names = ["a.png", "a.jpg", "x/y.png", "x__y.png", "b.PNG", "b.png"]
    paths = []
    for i, name in enumerate(names):
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        pixels[8 * i: 8 * i + 8] = 255  # each image its own band: their overlays differ
        Image.fromarray(pixels).save(p, quality=95) if name.endswith(".jpg") else Image.fromarray(pixels).save(p)
        paths.append(p)
    return paths


def test_overlay_names_are_unique_per_image():
    names = OverlayNames(Path("/o"))
    got = [names(Path(n)) for n in ("a.png", "a.jpg", "x/y.png", "x__y.png", "b.PNG", "b.png", "a.jpg.png")]
    assert len({p.as_posix().lower() for p in got}) == len(got)
    assert got[:4] == [Path("/o/a.png"), Path("/o/a.jpg.png"), Path("/o/x/y.png"), Path("/o/x__y.png")]


def test_predict_overlays_never_overwrite_each_other(run, tmp_path):
    images = tmp_path / "images"
    _images(images)
    lines = []
    summary = predict_run(run, images, out=tmp_path / "ov", emit=lines.append, warn=lambda m: None)
    assert summary["images"] == 6
    overlays = [Path(line["overlay"]) for line in lines]
    assert len(set(overlays)) == 6 and all(p.is_file() for p in overlays)
    assert len({p.read_bytes() for p in overlays}) == 6  # each line's file is its own image's overlay
    by_image = {Path(line["path"]).relative_to(images).as_posix(): Path(line["overlay"]) for line in lines}
    assert by_image["a.jpg"].name == "a.jpg.png" and by_image["x/y.png"] == tmp_path / "ov" / "x" / "y.png"


@pytest.mark.parametrize("value", ["7", "-1"])
def test_predict_checkpoint_error_names_checkpoint(run, tmp_path, value):
    img = _images(tmp_path / "images")[0]
    with pytest.raises(EdgeadError, match=f"^--checkpoint {value}: expected a completed task"):
        predict_run(run, img, checkpoint=value)


def test_a_failed_write_names_the_file(tmp_path):
    target = tmp_path / "overlays" / "a.png"
    code = ("import sys\nfrom firmware_sim.atomic import atomic_write_bytes\n"
            "try:\n    atomic_write_bytes(sys.argv[1], bytes(100_000))\n"
            "except OSError as e:\n    print(e.filename, e.strerror)\n")
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000)))
    assert r.stdout.strip() == f"{target} File too large", r.stderr
    assert not target.exists() and not list(target.parent.iterdir())  # no temporary file left either
