"""The peer benchmark (anomalib's STFPM beside edgead's models): the split it hands anomalib, the venv
builder's failure report, the peer output parsing and one real --quick run.

No network and no pip install here. The --quick run trains our two models for real; its peer side runs for
real in the venv named by $EDGEAD_PEER_VENV when that is set (build it once with
`python benchmarks/bench_peer.py --quick`), and otherwise goes through the "cannot build" path with a venv
that has no pip, which must name the failing step.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import bench_peer
from edgead.data import TaskStream
from edgead.errors import EdgeadError
from firmware_sim.preprocess import Preprocess
from peer_venv import ENV_VENV, MARKER, PeerUnavailable, ensure_peer_venv


@pytest.fixture(scope="module")
def venv_without_pip(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("peer") / "venv-no-pip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_peer_data_is_the_split_edgead_trains_and_tests_on(synth_root, tmp_path):
    data = bench_peer.prepare_peer_data(synth_root, "nut", tmp_path / "peer", seed=3)
    split = TaskStream(synth_root, ["nut"]).tasks[0].load(Preprocess(image_size=64), val_fraction=0.1, seed=3)
    peer = tmp_path / "peer" / "nut"
    ours_train = {Path(p).name for p in split.train.paths}
    assert _files(peer / "train" / "good") == ours_train == set(data["train_files"])
    assert not ours_train & {Path(p).name for p in split.val.paths}  # the held-out normals stay out
    assert data["held_out_images"] == len(split.val) >= 1
    src = synth_root / "nut"
    assert _files(peer / "test") == _files(src / "test")
    assert data["test_anomalous"] == int(split.test.labels.sum()) >= 1
    for rel in _files(src / "ground_truth"):  # every mask, named <stem>_mask.png, byte-identical
        assert (peer / "ground_truth" / rel).read_bytes() == (src / "ground_truth" / rel).read_bytes()


def test_peer_data_masks(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root / "nut", root / "nut")
    first, second = sorted((root / "nut" / "ground_truth").rglob("*_mask.png"))[:2]
    # edgead also reads a mask named like its image; anomalib pairs only <stem>_mask names.
    first.rename(first.with_name(first.name.replace("_mask", "")))
    bench_peer.prepare_peer_data(root, "nut", tmp_path / "peer", seed=0)
    assert (tmp_path / "peer" / "nut" / "ground_truth" / first.parent.name / first.name).is_file()
    second.unlink()
    image = root / "nut" / "test" / second.parent.name / second.name.replace("_mask", "")
    with pytest.raises(EdgeadError, match="no ground-truth mask") as e:
        bench_peer.prepare_peer_data(root, "nut", tmp_path / "peer2", seed=0)
    assert str(image) in str(e.value)


def test_peer_venv_without_pip_names_the_failing_step(venv_without_pip):
    with pytest.raises(PeerUnavailable) as e:
        ensure_peer_venv(venv_without_pip, log=lambda m: None)
    msg = str(e.value)
    assert "step 2/5 (install torch with torchvision)" in msg
    assert "-m pip install torch==2.14.1 torchvision==0.29.1" in msg
    assert "No module named pip" in msg  # the tool's own last line
    assert not (venv_without_pip / MARKER).exists()  # never marked usable


def test_peer_venv_bad_paths(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PeerUnavailable, match="exists and is not a folder"):
        ensure_peer_venv(tmp_path / "file", log=lambda m: None)
    missing = tmp_path / "no-such-python"
    with pytest.raises(PeerUnavailable, match=r"step 1/5 \(create the virtual environment\) could not start"):
        ensure_peer_venv(tmp_path / "venv", python=str(missing), log=lambda m: None)


def test_parse_peer_output():
    good = bench_peer.RESULT_MARKER + json.dumps({"versions": {}, "rows": [{"backbone": "resnet18"}]})
    parsed = bench_peer.parse_peer_output("lightning noise\n" + good + "\n", "", 0)
    assert parsed["rows"][0]["backbone"] == "resnet18"
    with pytest.raises(PeerUnavailable, match=r"exit code 1(.|\n)*RuntimeError: boom"):
        # a failed run's result line is not trusted
        bench_peer.parse_peer_output(good, "Traceback\nRuntimeError: boom\n", 1)
    with pytest.raises(PeerUnavailable, match="printed no 'EDGEAD_PEER_RESULT' line"):
        bench_peer.parse_peer_output("only noise\n", "", 0)


def test_bench_peer_quick(tmp_path, venv_without_pip, capsys):
    real_peer = os.environ.get(ENV_VENV)
    venv = real_peer or str(venv_without_pip)
    rc = bench_peer.main(["--quick", "--venv", venv, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "peer_quick.json").read_text())
    assert {"command", "date", "machine", "rows", "checks", "data"} <= set(saved)
    rows = saved["rows"]
    ours = [r for r in rows if r["framework"].startswith("edgead")]
    peers = [r for r in rows if r["framework"].startswith("anomalib")]
    assert [r["model"] for r in ours] == ["PaSTe", "STFPM"]
    assert [r["backbone"] for r in peers] == ["resnet18", "mobilenetv2"]
    for r in ours + (peers if real_peer else []):
        assert r["status"] == "ok"
        assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pixel_auroc"] <= 1.0
        assert 0 < r["min_ms"] <= r["p50_ms"] and r["param_bytes"] == 4 * r["params"] > 0
        assert r["state_dict_bytes"] > r["param_bytes"]  # every parameter plus BN buffers and the container
        assert r["train_images"] == saved["data"]["train_images"] == 9
    assert ours[0]["params"] < ours[1]["params"]  # PaSTe shares the trunk: fewer parameters than STFPM
    if real_peer:
        assert rc == 0 and saved["peer_error"] is None
        assert saved["peer_environment"]["versions"]["anomalib"] == "2.7.0"
        assert saved["checks"] and all(c["pass"] for c in saved["checks"])
    else:
        assert rc == 1
        assert "step 2/5" in saved["peer_error"] and "No module named pip" in saved["peer_error"]
        assert all(r["status"] == "unavailable" and "step 2/5" in r["note"] for r in peers)
        assert "error: peer environment" in capsys.readouterr().err
    with open(tmp_path / "peer_quick.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == [r["model"] for r in rows]
    assert set(bench_peer.COLS) <= set(table[0])
    with Image.open(tmp_path / "peer_quick.png") as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 200
    # --from-json redraws the same table and picture from the saved file, training nothing.
    (tmp_path / "peer_quick.png").unlink()
    assert bench_peer.main(["--from-json", str(tmp_path / "peer_quick.json")]) == rc
    assert (tmp_path / "peer_quick.png").is_file()
    assert json.loads((tmp_path / "peer_quick.json").read_text())["rows"] == rows
    (tmp_path / "not_results.json").write_text("[1, 2]")
    with pytest.raises(EdgeadError, match="not a bench_peer results file"):
        bench_peer.main(["--from-json", str(tmp_path / "not_results.json")])
