"""Shared fixtures: the read-only ../shared folder, MCUNet-in3 weights, small synthetic datasets."""

from __future__ import annotations

import contextlib
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

@contextlib.contextmanager
def _synthetic_data(data: Path, categories: list[str], n_train: int, n_test: int):
    """Generates 64 px synthetic ``categories`` (seed 0) in ``data`` unless there, and points the weights
    variable at ../shared for the training that follows (session helpers run outside the autouse fixture)."""
    assert (MCUNET_DIR / "mcunet-320kb-1mb_imagenet.pth").is_file(), f"MCUNet-in3 weights not in {MCUNET_DIR}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
        if not data.is_dir():
            from edgead.data.synth import generate_dataset

            generate_dataset(data, categories, seed=0, image_size=64, n_train=n_train, n_test=n_test)
        yield


def _synthetic_run(base: Path, categories: list[str], n_train: int, n_test: int, epochs: int) -> dict:
    """{'data', 'run'} under ``base``: 64 px synthetic ``categories`` (seed 0) and PaSTe-MCUNet trained on the
    first for ``epochs`` (batch 8), built once (a finished run has its results.json)."""
    data, run = base / "data", base / "run"
    if not (run / "results.json").is_file():
        from edgead.cl.config import ReplayConfig
        from edgead.cl.runner import run_stream
        from edgead.data import TaskStream
        from edgead.engine.trainer import TrainConfig
        from edgead.models.teacher_student import DetectorConfig

        with _synthetic_data(data, categories, n_train, n_test):
            det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
            cfg = TrainConfig(epochs=epochs, batch_size=8, progress=False)
            run_stream(TaskStream(data, categories[:1]), det, cfg, ReplayConfig(), run, log=lambda m: None)
    return {"data": data, "run": run}


def tiny_run(tmp_path_factory) -> dict:
    """{'data', 'run'}: PaSTe-MCUNet trained 1 epoch (batch 8) on 64 px synthetic 'nut'; the data folder also
    holds 'brick' (a second product for the device's task tests), 12 train / 4 test images per product."""
    return _synthetic_run(tmp_path_factory.getbasetemp() / "tiny", ["nut", "brick"], 12, 4, epochs=1)


def tiny_export(tmp_path_factory, formats: list[str]) -> Path:
    """The tiny run exported as ``formats`` (calibration 8 images, drift allowed), once per session."""
    art = tmp_path_factory.getbasetemp() / "tiny-art" / "-".join(formats)
    if not (art / "manifest.json").is_file():
        from edgead.export.pipeline import ExportOptions, export_run

        run = tiny_run(tmp_path_factory)["run"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
            export_run(run, art, ExportOptions(formats=list(formats), calibration=8, allow_drift=True,
                                               force=True))
    return art


@pytest.fixture(scope="session")
def tiny_host(tmp_path_factory) -> dict:
    """{'data', 'run', 'art'}: the tiny run and its tflite-int8 + onnx export (the device tests' artifact)."""
    return {**tiny_run(tmp_path_factory), "art": tiny_export(tmp_path_factory, ["tflite-int8", "onnx"])}


def _edgead_cli(argv: list[str]) -> None:
    from edgead import console
    from edgead.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(console, "_level", console.level())  # --quiet must not outlive the call
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
        with _synthetic_data(data, ["nut", "brick"], 12, 6):
            _edgead_cli(["train", "--data", str(data), "--tasks", "nut,brick", "--out", str(run),
                         "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.25",
                         "--quiet"])
    return {"data": data, "run": run}


def two_task_onnx(tmp_path_factory) -> dict:
    """{'data', 'run', 'art'}: the two-task run and its `edgead export --format onnx` (8 calibration
    images)."""
    tasks = two_task_run(tmp_path_factory)
    art = tmp_path_factory.getbasetemp() / "two-task-art"
    if not (art / "manifest.json").is_file():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
            _edgead_cli(["export", "--run", str(tasks["run"]), "--out", str(art), "--format", "onnx",
                         "--calibration", "8", "--allow-drift", "--force", "--quiet"])
    return {**tasks, "art": art}


def export_test_run(tmp_path_factory) -> dict:
    """{'data', 'run'}: the export tests' run, PaSTe-MCUNet trained 2 epochs (batch 8) on 64 px synthetic
    'nut' (20 train / 8 test images): more images than the tiny run, for fidelity AUROCs with some resolution."""
    return _synthetic_run(tmp_path_factory.getbasetemp() / "export-run", ["nut"], 20, 8, epochs=2)


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
