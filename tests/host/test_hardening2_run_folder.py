"""Run-folder ownership by marker, not by file names (issue 21, probe cases 1 and 2).

Case 2: a user's `checkpoints/task_00.pt` and `memory/after_task_00.npz` used to count as the run's own (their
names match) and were overwritten without --force. Case 1: a train that stopped after its checks left
config.yaml behind, so the same command was refused ("not an edgead run") and --resume had "nothing to resume".
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgead.cl.run_folder import check_new_run_folder, read_state
from edgead.cli import main
from edgead.errors import EdgeadError
from firmware_sim.outputs import MARKER, read_marker


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _train(data: Path, out: Path, *extra: str) -> None:
    main(["-q", "train", "--data", str(data), "--tasks", "nut", "--image-size", "64", "--epochs", "1",
          "--batch-size", "4", "--out", str(out), *extra])


@pytest.fixture
def users_folder(tmp_path) -> Path:
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "memory").mkdir()
    (out / "checkpoints" / "task_00.pt").write_bytes(os.urandom(1000))
    (out / "memory" / "after_task_00.npz").write_bytes(os.urandom(500))
    return out


def test_a_users_files_named_like_a_runs_are_not_the_runs(users_folder, synth_root, capsys):
    before = _snapshot(users_folder)
    for extra in ((), ("--force",)):  # --force writes beside a user's files, never over them
        with pytest.raises(SystemExit) as e:
            _train(synth_root, users_folder, *extra)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "checkpoints" in err and "Traceback" not in err, err
    assert _snapshot(users_folder) == before
    assert read_marker(users_folder) is None  # not claimed either


def test_force_writes_beside_files_that_do_not_clash(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep\n")
    with pytest.raises(EdgeadError, match="not empty and not an edgead run"):
        check_new_run_folder(out, force=False)
    assert check_new_run_folder(out, force=True) == out.resolve()
    assert read_marker(out) == "run" and (out / "notes.txt").read_text() == "keep\n"


def test_the_marker_makes_leftovers_of_a_stopped_first_task_the_runs(tmp_path):
    out = tmp_path / "run"
    check_new_run_folder(out, force=False)  # claims it: the marker comes before any other file
    assert (out / MARKER).is_file()
    for name in ("config.yaml", "dataset.yaml"):
        (out / name).write_text("x: 1\n")
    (out / "calibration").mkdir()
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "task_00.pt").write_bytes(b"partial")
    check_new_run_folder(out, force=False)  # the same command again: its own leftovers
    with pytest.raises(EdgeadError, match="without --resume"):
        read_state(out)
    (out / "state.json").write_text('{"config": {}, "completed_tasks": 1}')
    with pytest.raises(EdgeadError, match="--resume"):
        check_new_run_folder(out, force=True)  # --force never starts over a run with a finished task


def test_dotdot_out_is_the_folder_it_names(tmp_path):
    x = tmp_path / "x"
    x.mkdir()
    (x / "config.yaml").write_text("mine\n")
    with pytest.raises(EdgeadError, match="not empty"):
        check_new_run_folder(x / "nosub" / "..", force=False)
    with pytest.raises(EdgeadError, match="write over"):
        check_new_run_folder(x / "nosub" / "..", force=True)
    assert not (x / "nosub").exists() and (x / "config.yaml").read_text() == "mine\n"


def test_a_train_stopped_by_a_bad_image_runs_again_with_the_same_command(synth_root, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "nut").mkdir(parents=True)
    shutil.copytree(synth_root / "nut", data / "nut", dirs_exist_ok=True)
    bad = data / "nut" / "train" / "good" / "zz_empty.png"
    bad.write_bytes(b"")
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        _train(data, out)
    assert "zz_empty.png" in capsys.readouterr().err
    assert (out / "config.yaml").is_file() and not (out / "state.json").exists()
    with pytest.raises(SystemExit):
        _train(data, out, "--resume")
    assert "run the same command without --resume" in capsys.readouterr().err
    bad.unlink()
    _train(data, out)  # the same command: the folder is this run's, not "not an edgead run"
    assert (out / "state.json").is_file() and (out / "checkpoints" / "task_00.pt").is_file()
