"""The `edgead` command line as a user runs it: real processes, clear errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import MCUNET_DIR


def _edgead(*args, cwd=None):
    env = dict(os.environ, EDGEAD_WEIGHTS_DIR=str(MCUNET_DIR))
    return subprocess.run([sys.executable, "-m", "edgead", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_help_is_fast_and_lists_commands():
    r = _edgead("--help")
    assert r.returncode == 0
    for cmd in ("data", "info", "train", "eval", "demo"):
        assert cmd in r.stdout


def test_info_json_paper_configuration():
    r = _edgead("info", "--model", "paste", "--backbone", "mcunet-in3", "--levels", "6,10,14", "--bootstrap", "5",
                "--image-size", "224", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert abs(d["architecture_mib_fp32"] - 1.68) / 1.68 < 0.02
    assert d["latent_shape"] == [24, 28, 28]


@pytest.mark.slow
def test_data_synth_show_train_eval(tmp_path, edgead_in_process):
    # train runs as a user runs it (a real process); the other commands run the same main() in this process.
    data = tmp_path / "data"
    r = edgead_in_process("data", "synth", str(data), "--categories", "nut,grass",
                           "--image-size", "64", "--train", "8", "--test", "4")
    assert r.returncode == 0, r.stderr
    r = edgead_in_process("data", "show", str(data), "--out", str(tmp_path / "m.png"))
    assert r.returncode == 0 and "nut" in r.stdout and (tmp_path / "m.png").stat().st_size > 1000
    run = tmp_path / "run"
    r = _edgead("train", "--data", str(data), "--tasks", "nut", "--image-size", "64", "--epochs", "1",
                "--batch-size", "4", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "image_auroc" in r.stdout and "forget(" not in r.stdout  # one task: nothing to forget yet
    log = (run / "train.log").read_text()
    assert "task 1: nut" in log and "nut epoch 1: loss" in log  # the run folder keeps what was printed
    epochs = (run / "epochs.csv").read_text().splitlines()
    assert epochs[0] == "task_index,task,epoch,loss,selection,seconds" and epochs[1].startswith("0,nut,1,")
    saved = json.loads((run / "results.json").read_text())["metrics"]["image_auroc"]["matrix"][0][0]
    r = edgead_in_process("eval", "--run", str(run), "--per-defect", "--json")
    assert r.returncode == 0, r.stderr
    nut = json.loads(r.stdout)["metrics"]["nut"]
    assert json.loads((run / "eval.json").read_text())["metrics"]["nut"] == nut
    assert abs(nut["image_auroc"] - saved) < 1e-9
    kinds = nut["per_defect"]
    assert {"scratch", "hole"} <= set(kinds) and abs(sum(k["defect_pixel_share"] for k in kinds.values()) - 1) < 1e-6
    assert all(0 <= k["image_auroc"] <= 1 and k["n"] > 0 for k in kinds.values())


def test_bad_input_gives_clear_error_not_traceback(tmp_path, edgead_in_process):
    cases = [
        (("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")), "dataset root not found"),
        (("info", "--backbone", "vgg"), "unknown backbone 'vgg'"),
        (("info", "--levels", "6,10,30"), "out of range"),
        (("eval", "--run", str(tmp_path)), "no results.json"),
        (("data", "convert", "magnetic-tile", str(tmp_path), str(tmp_path / "o")), "not a Magnetic-Tile folder"),
    ]
    # One as a user meets it (a real process: its exit status, no traceback on stderr); the rest in process.
    args, message = cases[0]
    r = _edgead(*args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    for args, message in cases[1:]:
        r = edgead_in_process(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bench_lists_every_script_and_forwards_arguments(tmp_path):
    from pathlib import Path

    from edgead.cli.bench import SCRIPTS

    root = Path(__file__).resolve().parents[2]
    for name, (module, _) in SCRIPTS.items():
        text = (root / "benchmarks" / f"{module}.py").read_text()
        assert "def main(argv" in text and "--quick" in text, name
    r = _edgead("bench", "--help")
    assert r.returncode == 0 and all(name in r.stdout for name in SCRIPTS)
    r = _edgead("bench", "memory-budget", "--budgets", "", "--out-dir", str(tmp_path))
    assert r.returncode != 0 and "--budgets" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was written
