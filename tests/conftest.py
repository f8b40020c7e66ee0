"""Shared fixtures: the read-only ../shared folder, MCUNet-in3 weights, small synthetic datasets."""

from __future__ import annotations

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
