"""Shared fixtures: the read-only ../shared folder, MCUNet-in3 weights, small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MCUNET_DIR = SHARED / "weights" / "mcunet-in3"
MAGNETIC_TILE = SHARED / "data" / "magnetic-tile"


@pytest.fixture(autouse=True)
def _weights_env(monkeypatch, tmp_path_factory):
    # Tests resolve weights from ../shared only and never from a user cache or the internet.
    monkeypatch.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
    monkeypatch.setenv("EDGEAD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "weights-cache"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from edgead.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, ("nut", "brick", "pill"), seed=0, image_size=64, n_train=12, n_test=6)
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # torch's 2-thread pool crawls when the 2 cores are shared with other work (one small conv: 32 ms with
    # 2 threads vs 1.2 ms with 1); tests measure behaviour, not speed, so they run single-threaded.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- Tiny trained runs and exports shared by many modules -------------------------------------------------
# Training even a 1-epoch 64 px model and converting it to TFLite cost tens of seconds each on the 2 shared
# cores (the TFLite conversion most: ~1 min under load), so the modules that only need *a* small trained
# run or artifact share these, built once per session (per worker) under the session's base temp folder.
# They are read-only: a test that changes one copies it to its tmp_path first.

def tiny_run(tmp_path_factory) -> dict:
    """{'data', 'run'}: PaSTe-MCUNet trained 1 epoch (batch 8) on 64 px synthetic 'nut'; the data folder also
    holds 'brick' (a second product for the device's task tests), 12 train / 4 test images per product."""
    base = tmp_path_factory.getbasetemp() / "tiny"
    data, run = base / "data", base / "run"
    if not (run / "results.json").is_file():
        from edgead.cl.config import ReplayConfig
        from edgead.cl.runner import run_stream
        from edgead.data import TaskStream
        from edgead.data.synth import generate_dataset
        from edgead.engine.trainer import TrainConfig
        from edgead.models.teacher_student import DetectorConfig

        assert (MCUNET_DIR / "mcunet-320kb-1mb_imagenet.pth").is_file(), f"MCUNet-in3 weights not in {MCUNET_DIR}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
            if not data.is_dir():
                generate_dataset(data, ["nut", "brick"], seed=0, image_size=64, n_train=12, n_test=4)
            run_stream(TaskStream(data, ["nut"]), DetectorConfig.defaults("paste", "mcunet-in3", image_size=64),
                       TrainConfig(epochs=1, batch_size=8, progress=False), ReplayConfig(), run, log=lambda m: None)
    return {"data": data, "run": run}


def tiny_export(tmp_path_factory, formats: list[str]) -> Path:
    """The tiny run exported as ``formats`` (calibration 8 images, drift allowed), once per session."""
    art = tmp_path_factory.getbasetemp() / "tiny-art" / "-".join(formats)
    if not (art / "manifest.json").is_file():
        from edgead.export.pipeline import ExportOptions, export_run

        run = tiny_run(tmp_path_factory)["run"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
            export_run(run, art, ExportOptions(formats=list(formats), calibration=8, allow_drift=True, force=True))
    return art


@pytest.fixture(scope="session")
def tiny_host(tmp_path_factory) -> dict:
    """{'data', 'run', 'art'}: the tiny run and its tflite-int8 + onnx export (the device tests' artifact)."""
    return {**tiny_run(tmp_path_factory), "art": tiny_export(tmp_path_factory, ["tflite-int8", "onnx"])}


def _edgead_cli(argv: list[str]) -> None:
    from edgead.cli import main

    try:
        main(argv)
    except SystemExit as e:
        assert e.code in (0, None), f"edgead {argv[0]} failed ({e.code})"


def two_task_run(tmp_path_factory) -> dict:
    """{'data', 'run'}: `edgead train` (in process) on 64 px synthetic 'nut' then 'brick' (12 train / 6 test
    images each), 1 epoch, batch 8, a quarter of the training images held out for the per-task thresholds."""
    base = tmp_path_factory.getbasetemp() / "two-task"
    data, run = base / "data", base / "run"
    if not (run / "results.json").is_file():
        from edgead.data.synth import generate_dataset

        assert (MCUNET_DIR / "mcunet-320kb-1mb_imagenet.pth").is_file(), f"MCUNet-in3 weights not in {MCUNET_DIR}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
            if not data.is_dir():
                generate_dataset(data, ["nut", "brick"], seed=0, image_size=64, n_train=12, n_test=6)
            _edgead_cli(["train", "--data", str(data), "--tasks", "nut,brick", "--out", str(run), "--image-size",
                         "64", "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.25", "--quiet"])
    return {"data": data, "run": run}


def two_task_onnx(tmp_path_factory) -> dict:
    """{'data', 'run', 'art'}: the two-task run and its `edgead export --format onnx` (8 calibration images)."""
    tasks = two_task_run(tmp_path_factory)
    art = tmp_path_factory.getbasetemp() / "two-task-art"
    if not (art / "manifest.json").is_file():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
            _edgead_cli(["export", "--run", str(tasks["run"]), "--out", str(art), "--format", "onnx",
                         "--calibration", "8", "--allow-drift", "--force", "--quiet"])
    return {**tasks, "art": art}


def export_test_run(tmp_path_factory) -> dict:
    """{'data', 'run'}: the export tests' run, PaSTe-MCUNet trained 2 epochs (batch 8) on 64 px synthetic 'nut'
    (20 train / 8 test images): more images than the tiny run, for fidelity AUROCs with some resolution."""
    base = tmp_path_factory.getbasetemp() / "export-run"
    data, run = base / "data", base / "run"
    if not (run / "results.json").is_file():
        from edgead.cl.config import ReplayConfig
        from edgead.cl.runner import run_stream
        from edgead.data import TaskStream
        from edgead.data.synth import generate_dataset
        from edgead.engine.trainer import TrainConfig
        from edgead.models.teacher_student import DetectorConfig

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
            if not data.is_dir():
                generate_dataset(data, ["nut"], seed=0, image_size=64, n_train=20, n_test=8)
            run_stream(TaskStream(data, ["nut"]), DetectorConfig.defaults("paste", "mcunet-in3", image_size=64),
                       TrainConfig(epochs=2, batch_size=8, progress=False), ReplayConfig(), run, log=lambda m: None)
    return {"data": data, "run": run}


@pytest.fixture
def edgead_in_process(capsys, monkeypatch):
    """Runs `edgead ARGS...` as the main() that `python -m edgead` calls, in this process (a new interpreter
    imports torch: seconds per call on the shared cores), and returns its exit status, stdout and stderr as a
    CompletedProcess. An exception other than SystemExit (what would be a traceback) fails the test. Keep a
    few real-process tests per entry point; use this for the rest."""
    import subprocess

    from edgead import console
    from edgead.cli import main

    monkeypatch.setattr(console, "_level", console.level())  # main() sets the verbosity: restored after
    for name in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY"):  # and these: monkeypatch restores them too
        monkeypatch.setenv(name, os.environ.get(name, "unset"))  # records the value before (or its absence)
        if os.environ[name] == "unset":
            monkeypatch.delenv(name)

    def run(*args) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        capsys.readouterr()
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = 0 if e.code is None else int(e.code)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["edgead", *argv], code, out, err)

    return run
