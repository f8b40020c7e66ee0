"""Issue #14, `edgead export`: the published folder has the user's normal permissions, a full disk stops the
export before any work with the path named, and a TFLite conversion that cannot write its temporary
SavedModel says so (not "'NoneType' object is not callable").

One tiny run (64 px, 1 epoch) and ONNX-only exports keep this file short; real files and real limits
(RLIMIT_FSIZE in a child process) throughout.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from edgead.export.pipeline import ExportOptions, export_run

from tests.conftest import MCUNET_DIR, ROOT, tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)["run"]  # the session's 1-epoch 64 px run (tests/conftest.py), never changed


def _child(args: list[str], fsize: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGEAD_WEIGHTS_DIR=str(MCUNET_DIR), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize)))


def test_export_folder_gets_the_umask_mode(run_dir, tmp_path):
    out = tmp_path / "art"
    old = os.umask(0o027)
    try:
        export_run(run_dir, out, ExportOptions(formats=["onnx"], calibration=8, allow_drift=True))
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o750  # what mkdir gives under this umask (mkdtemp alone: 0700)
    assert all(p.stat().st_mode & 0o777 == 0o640 for p in out.iterdir())


def test_full_disk_stops_export_before_work_with_the_path(run_dir, tmp_path):
    out = tmp_path / "art"
    r = _child(["-m", "edgead", "export", "--run", str(run_dir), "--out", str(out), "--format", "onnx",
                "--calibration", "8", "--allow-drift", "--quiet"], fsize=300_000)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"--out {out}" in r.stderr and "File too large" in r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_tflite_conversion_without_room_for_its_savedmodel_says_so(tmp_path):
    # The converter writes a SavedModel of the float weights (~800 kB here) into the temporary folder.
    script = textwrap.dedent("""
        import numpy as np
        from edgead.errors import EdgeadError
        from edgead.export.tflite import convert_int8, import_tensorflow
        import_tensorflow()
        import keras
        inp = keras.Input((8, 8, 3), batch_size=1)
        model = keras.Model(inp, keras.layers.Conv2D(16, 3)(keras.layers.Conv2D(1024, 1)(keras.layers.Conv2D(
            192, 1)(inp))))
        samples = lambda: (np.random.default_rng(0).random((1, 8, 8, 3), np.float32) for _ in range(4))
        try:
            convert_int8(model, samples, "int8", (0.0, 1.0))
        except EdgeadError as e:
            print("EDGEAD_ERROR", e)
    """)
    r = _child(["-c", script], fsize=300_000)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    msg = r.stdout.split("EDGEAD_ERROR", 1)[1]
    assert "temporary folder" in msg and "File too large" in msg and "TMPDIR" in msg
    assert "NoneType" not in msg
