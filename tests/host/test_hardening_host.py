"""Issue #14, host side: bad masks, non-empty/unwritable/full --out folders, damaged replay on --resume,
weights that are not the published file, decompression bombs, and paths compared as folders on resume.

Everything uses real files: generated datasets (64 px), real MCUNet-in3 weights, real file-system limits
(a path under a regular file; RLIMIT_FSIZE in a child process for a full disk).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgead.cl.config import ReplayConfig
from edgead.cl.run_folder import check_new_run_folder, config_differences
from edgead.cl.runner import run_stream
from edgead.data import TaskStream
from edgead.data.layout import scan_mvtec
from edgead.data.loading import load_entries
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.models import weights as W
from edgead.models.backbones.registry import get_backbone_spec
from edgead.models.teacher_student import DetectorConfig
from firmware_sim.outputs import MARKER
from firmware_sim.preprocess import Preprocess, load_mask
from tests.conftest import MCUNET_DIR, ROOT

SIZE = 64
MCUNET_FILE = MCUNET_DIR / "mcunet-320kb-1mb_imagenet.pth"


def _det():
    return DetectorConfig.defaults("paste", "mcunet-in3", image_size=SIZE)


def _cfg():
    return TrainConfig(epochs=1, batch_size=4, progress=False)


_REPLAY_KEYS = ("strategy", "codec", "budget_bytes", "memory_size", "policy", "device_buffer", "device_trunk")


def _run(root, tasks, out, log=lambda m: None, **kw):
    replay = ReplayConfig(**{k: kw.pop(k) for k in _REPLAY_KEYS if k in kw})
    return run_stream(TaskStream(root, tasks), _det(), _cfg(), replay, out, log=log, **kw)


def _edgead(*args, fsize: int | None = None, cwd=None):
    """The CLI as a user runs it, optionally with a file size limit (what `ulimit -f` sets)."""
    env = dict(os.environ, EDGEAD_WEIGHTS_DIR=str(MCUNET_DIR), PYTHONPATH=str(ROOT))

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "edgead", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600, preexec_fn=limit if fsize else None)


def _train_args(data, out, *extra):
    return ("train", "--data", str(data), "--tasks", "nut", "--image-size", str(SIZE), "--epochs", "1",
            "--batch-size", "4", "--out", str(out), "--quiet", *extra)


@pytest.fixture
def data(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset (nut, brick, pill), free to damage."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    return root


def _masks(root: Path, category: str) -> list[Path]:
    return sorted((root / category / "ground_truth").rglob("*_mask.png"))


# ---------------------------------------------------------------- masks: one rule, checked before training


@pytest.mark.parametrize("value", [1, 100, 255])
def test_any_nonzero_mask_pixel_is_a_defect(tmp_path, value):
    a = np.zeros((20, 30), np.uint8)
    a[5:9, 10:20] = value
    Image.fromarray(a).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", expected_size=(30, 20))
    assert m.dtype == bool and m.sum() == 40 and m[5:9, 10:20].all()


@pytest.mark.parametrize("mode", ["I;16", "F", "RGBA", "P"])
def test_mask_rule_holds_in_other_modes(tmp_path, mode):
    a = np.zeros((20, 30), np.uint8)
    a[5:9, 10:20] = 1
    if mode == "I;16":
        img = Image.fromarray(a.astype(np.uint16))  # a 16-bit 0/1 mask
    elif mode == "F":
        img = Image.fromarray(a.astype(np.float32) * 0.25)
    elif mode == "RGBA":
        rgba = np.zeros((20, 30, 4), np.uint8)
        rgba[..., 3] = 255  # opaque everywhere: alpha is not a defect
        rgba[5:9, 10:20, 0] = 100
        img = Image.fromarray(rgba)
    else:
        img = Image.fromarray(a * 7).convert("P")
    img.save(tmp_path / ("m.tif" if mode == "F" else "m.png"))
    m = load_mask(tmp_path / ("m.tif" if mode == "F" else "m.png"))
    assert m.sum() == 40 and m[5:9, 10:20].all()


def _redraw_masks(root: Path, category: str, value: int) -> None:
    for p in _masks(root, category):
        a = np.asarray(Image.open(p).convert("L"))
        Image.fromarray(np.where(a > 0, value, 0).astype(np.uint8)).save(p)


def test_masks_drawn_with_1_or_100_load_as_the_0_255_ones(data, synth_root):
    pre = Preprocess(image_size=SIZE)
    ref = load_entries(scan_mvtec(synth_root, "nut").test, pre).masks
    assert ref.any()
    for value in (1, 100):
        _redraw_masks(data, "nut", value)
        got = load_entries(scan_mvtec(data, "nut").test, pre).masks
        np.testing.assert_array_equal(got, ref)


def test_0_1_masks_train_and_give_pixel_metrics(data, tmp_path):
    _redraw_masks(data, "nut", 1)
    res = _run(data, ["nut"], tmp_path / "run")
    pix = res["metrics"]["pixel_auroc"]["matrix"][0][0]
    assert pix is not None and 0.0 <= pix <= 1.0


def test_bad_mask_of_a_later_task_stops_before_any_training(data, tmp_path):
    bad = _masks(data, "pill")[0]
    Image.fromarray(np.zeros((SIZE // 2, SIZE), np.uint8)).save(bad)  # not its image's size
    out = tmp_path / "run"
    with pytest.raises(EdgeadError, match=f"{bad}.*mask is {SIZE}x{SIZE // 2}"):
        _run(data, ["nut", "brick", "pill"], out)
    assert not (out / "checkpoints").exists()  # refused before task 1 trained


def test_unreadable_mask_named_before_training_or_skipped(data, tmp_path):
    bad = _masks(data, "brick")[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(EdgeadError, match=f"{bad}.*--skip-bad"):
        _run(data, ["nut", "brick"], tmp_path / "a")
    assert not (tmp_path / "a" / "checkpoints").exists()
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        res = _run(data, ["brick"], tmp_path / "b", skip_bad=True)
    assert res["completed_tasks"] == 1


def test_all_masks_empty_is_refused_before_training(data, tmp_path):
    _redraw_masks(data, "brick", 0)
    with pytest.raises(EdgeadError, match="all .* ground-truth masks are empty"):
        _run(data, ["nut", "brick"], tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- decompression bombs


def _png_header_claiming(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height (a bomb as PIL sees it: the check reads only the header)."""
    Image.new("L", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def test_decompression_bomb_is_a_clear_error_or_skipped(data, tmp_path):
    train_bomb = data / "nut" / "train" / "good" / "zz_bomb.png"
    test_bomb = data / "nut" / "test" / "scratch" / "000.png"  # a defect image: its mask check meets it too
    for bomb in (train_bomb, test_bomb):
        _png_header_claiming(bomb, 20000, 20000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(train_bomb)  # the real PIL protection fires on these files
    with pytest.raises(EdgeadError, match=f"{test_bomb}.*decompression bomb.*--skip-bad"):
        _run(data, ["nut"], tmp_path / "a")
    with pytest.warns(UserWarning) as seen:
        res = _run(data, ["nut"], tmp_path / "b", skip_bad=True)
    assert res["completed_tasks"] == 1
    text = " ".join(str(w.message) for w in seen)
    assert "zz_bomb.png" in text and "000.png" in text


def test_decompression_bomb_on_the_command_line(data, tmp_path):
    bomb = data / "nut" / "train" / "good" / "000.png"
    _png_header_claiming(bomb, 20000, 20000)
    r = _edgead(*_train_args(data, tmp_path / "a"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {bomb}" in r.stderr and "decompression bomb" in r.stderr and "--skip-bad" in r.stderr


# ---------------------------------------------------------------- --out: foreign files, unwritable, full


def test_out_with_a_users_files_is_refused_unless_force(synth_root, tmp_path):
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "results.json").write_text("my own results\n")
    (out / "checkpoints" / "notes.txt").write_text("keep me\n")
    r = _edgead(*_train_args(synth_root, out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "not empty and not an edgead run" in r.stderr and "--force" in r.stderr
    assert (out / "results.json").read_text() == "my own results\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["notes.txt"]
    with pytest.raises(EdgeadError, match="checkpoints, results.json, which a run would write over"):
        _run(synth_root, ["nut"], out, force=True)  # --force writes beside a user's files, never over them
    assert (out / "checkpoints" / "notes.txt").read_text() == "keep me\n"
    assert (out / "results.json").read_text() == "my own results\n"


def test_leftovers_of_a_run_killed_while_saving_are_not_foreign(tmp_path):
    out = tmp_path / "run"
    check_new_run_folder(out, force=False)  # the run's marker, before any file of the run (issue 21, case 2)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "task_00.pt").write_bytes(b"partial")
    (out / "checkpoints" / ".task_00.pt.abc123.tmp").write_bytes(b"partial")
    (out / "results.json").write_text(json.dumps({"schema": "edgead-results/1"}))
    check_new_run_folder(out, force=False)  # no error: this run's own files
    (out / MARKER).unlink()  # the same names without the marker are not a run's (a user's task_00.pt)
    with pytest.raises(EdgeadError, match="checkpoints"):
        check_new_run_folder(out, force=False)
    (out / "state.json").write_text("{}")
    with pytest.raises(EdgeadError, match="--resume"):
        check_new_run_folder(out, force=True)  # --force never starts over a run


def test_out_that_cannot_be_created_fails_before_training(synth_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = _edgead(*_train_args(synth_root, blocker / "run"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{blocker}" in r.stderr and "is a file" in r.stderr
    assert "task 1/1" not in r.stderr  # nothing trained


def test_full_disk_stops_train_before_training(synth_root, tmp_path):
    out = tmp_path / "run"
    r = _edgead(*_train_args(synth_root, out), fsize=500_000)  # a checkpoint is ~2 MB
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"--out {out}" in r.stderr and "File too large" in r.stderr
    assert not (out / "checkpoints").exists()


def test_oserror_at_the_cli_names_the_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = _edgead("data", "synth", str(blocker / "data"), "--categories", "nut", "--image-size", "32",
                "--train", "2", "--test", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and str(blocker) in r.stderr


# ---------------------------------------------------------------- --resume: damaged replay, paths as folders


def _flip_record_byte(path: Path) -> None:
    """Flip one byte in the body of the last record (past the header), leaving the header intact."""
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 0xFF
    path.write_bytes(bytes(raw))


def _pretend_killed_after_first_task(out: Path) -> None:
    state = json.loads((out / "state.json").read_text())
    state["completed_tasks"] = 1
    (out / "state.json").write_text(json.dumps(state))


def test_resume_with_damaged_replay_records_stops_unless_skip_bad(synth_root, tmp_path):
    out = tmp_path / "run"
    kw = dict(strategy="compressed-replay", codec="int8-channel", memory_size=8)
    _run(synth_root, ["nut", "brick"], out, **kw)
    _pretend_killed_after_first_task(out)
    mem = out / "memory" / "after_task_00.edgeadrb"
    _flip_record_byte(mem)
    with pytest.raises(EdgeadError, match=f"{mem}.*damaged replay record.*--skip-bad"):
        _run(synth_root, ["nut", "brick"], out, resume=True, **kw)
    with pytest.warns(UserWarning, match=f"{mem}: 1 damaged replay record"):  # even with the log silenced (-q)
        res = _run(synth_root, ["nut", "brick"], out, resume=True, skip_bad=True, log=lambda m: None, **kw)
    assert res["completed_tasks"] == 2


def test_resume_treats_relative_and_absolute_data_paths_as_one(synth_root, tmp_path, monkeypatch):
    data = tmp_path / "d"
    shutil.copytree(synth_root / "nut", data / "nut")
    shutil.copytree(synth_root / "brick", data / "brick")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    _run("d", ["nut", "brick"], out)
    assert json.loads((out / "results.json").read_text())["config"]["data_root"] == str(data)  # absolute
    _pretend_killed_after_first_task(out)
    res = _run(f"{data}/", ["nut", "brick"], out, resume=True)
    assert res["completed_tasks"] == 2


def test_config_paths_compare_as_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    saved = {"data_root": "d", "device_buffer": None, "seed": 0}
    assert config_differences(saved, {"data_root": f"{tmp_path}/d/", "device_buffer": None, "seed": 0}) == []
    assert config_differences(saved, {"data_root": f"{tmp_path}/e", "device_buffer": None, "seed": 0}) == [
        "data_root"]
    assert config_differences(saved, {"data_root": "d", "device_buffer": None, "seed": 1}) == ["seed"]


# ---------------------------------------------------------------- weights: known sha256 checked


@pytest.fixture
def altered_weights(tmp_path) -> Path:
    """The published MCUNet-in3 file with one weight changed: loads fine, but is not the known file."""
    obj = torch.load(MCUNET_FILE, map_location="cpu", weights_only=True)
    key = next(k for k, v in obj["state_dict"].items() if v.is_floating_point())
    obj["state_dict"][key] = obj["state_dict"][key] + 0.5
    path = tmp_path / "altered" / MCUNET_FILE.name
    path.parent.mkdir()
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("where", ["env", "cache", "torch_hub"])
def test_found_weights_with_the_wrong_sha256_are_refused(altered_weights, tmp_path, monkeypatch, where):
    spec = get_backbone_spec("mcunet-in3")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(W.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR, raising=False)
    folder = {"env": tmp_path / "env", "cache": tmp_path / "cache",
              "torch_hub": tmp_path / "torch_home" / "hub" / "checkpoints"}[where]
    folder.mkdir(parents=True)
    shutil.copy(altered_weights, folder / MCUNET_FILE.name)
    if where == "env":
        monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(folder))
    with pytest.raises(EdgeadError, match=f"{folder / MCUNET_FILE.name}.*expected {spec.weights.sha256}"):
        W.build_backbone("mcunet-in3", download=False)
    shutil.copy(MCUNET_FILE, folder / MCUNET_FILE.name)  # the published file is accepted
    assert W.resolve_weights(spec, download=False) == folder / MCUNET_FILE.name


def test_explicit_weights_with_an_unknown_hash_warn_and_load(altered_weights):
    with pytest.warns(UserWarning, match="differs from the published mcunet-in3 weights"):
        model = W.build_backbone("mcunet-in3", weights=altered_weights, download=False)
    assert model is not None


def test_unreadable_run_state_and_image_memory_are_clear_errors(tmp_path):
    from edgead.cl.memory import ImageMemory
    from edgead.cl.run_folder import read_state

    (tmp_path / "state.json").write_text('{"config": {"tasks": ["nut"]}, "completed_')  # cut by a kill
    with pytest.raises(EdgeadError, match=f"{tmp_path / 'state.json'}: not readable run state"):
        read_state(tmp_path)
    bad = tmp_path / "after_task_00.npz"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(EdgeadError, match=f"{bad}: replay memory unreadable"):
        ImageMemory(SIZE, budget_bytes=None, memory_size=4, seed=0).load(bad)
