"""`edgetpu ART --no-compile` records only real TFLite models (issue 21, probe case 42).

Text files named `*_edgetpu.tflite` used to be recorded in the manifest with sizes and hashes and packed by
`bundle --format edgetpu`; nothing checked they were TFLite. The real file here is the MCUNet-in3 TFLite model
in ../shared (a TFLite flatbuffer as the compiler writes one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.bundle import make_bundle
from firmware_sim.edgetpu import add_edgetpu
from firmware_sim.errors import UserError
from firmware_sim.manifest import MANIFEST_NAME, load_manifest
from tests.conftest import MCUNET_DIR
from tests.device.test_hardening2_outputs import _artifact

ROOT = Path(__file__).resolve().parents[2]
REAL_TFLITE = MCUNET_DIR / "mcunet-320kb-1mb_imagenet.tflite"


@pytest.fixture
def art(tmp_path) -> Path:
    return _artifact(tmp_path / "art")


@pytest.mark.parametrize("content", [b"this is a text file, not a model\n", b"", b"\x1c\x00\x00\x00TFL3"])
def test_no_compile_refuses_files_that_are_not_tflite(art, content, tmp_path):
    (art / "trunk.int8_edgetpu.tflite").write_bytes(content)
    manifest = (art / MANIFEST_NAME).read_bytes()
    with pytest.raises(UserError, match="trunk.int8_edgetpu.tflite: not a TFLite model"):
        add_edgetpu(art, run_compiler=False)
    assert (art / MANIFEST_NAME).read_bytes() == manifest  # nothing recorded
    with pytest.raises(UserError, match="has none"):  # so nothing to bundle either
        make_bundle(art, tmp_path / "b", "edgetpu")


def test_no_compile_records_a_real_tflite_model(art, tmp_path):
    assert REAL_TFLITE.is_file(), f"MCUNet-in3 TFLite model not found in {MCUNET_DIR}"
    shutil.copy(REAL_TFLITE, art / "trunk.int8_edgetpu.tflite")
    res = add_edgetpu(art, run_compiler=False)
    assert res["compiled"] == {"trunk": "trunk.int8_edgetpu.tflite"}
    m = load_manifest(art)
    assert m.data["formats"]["tflite-int8"]["graphs"]["trunk"]["edgetpu"]["file"] == "trunk.int8_edgetpu.tflite"
    b = make_bundle(art, tmp_path / "b", "edgetpu", archive=False)
    assert (Path(b["bundle"]) / "artifact" / "trunk.int8_edgetpu.tflite").read_bytes() == REAL_TFLITE.read_bytes()


def test_cli_says_which_file(art):
    (art / "trunk.int8_edgetpu.tflite").write_text(json.dumps({"not": "a model"}))
    r = subprocess.run([sys.executable, "-m", "firmware_sim", "edgetpu", str(art), "--no-compile"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{art / 'trunk.int8_edgetpu.tflite'}: not a TFLite model" in r.stderr
