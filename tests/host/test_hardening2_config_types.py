"""Wrong types and out-of-range seeds are clear errors where the configuration is built (issue 21, probe cases 4,
52, 53): `--seed -1` / `--seed 2^64` were numpy and torch tracebacks, `fit(epochs="1")` a TypeError from the
trainer, `Detector(image_size=-1)` was refused only at `fit`, after config.yaml was written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgead.api import Detector
from edgead.cl.config import ReplayConfig
from edgead.cli import main
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.field_types import MAX_SEED
from edgead.models.teacher_student import DetectorConfig


@pytest.mark.parametrize("kw,message", [
    ({"epochs": "1"}, "epochs '1': expected an integer or None"),
    ({"lr": "0.1"}, "lr '0.1': expected a number"),
    ({"batch_size": True}, "batch_size True: expected an integer"),
    ({"seed": 1.5}, "seed 1.5: expected an integer"),
    ({"seed": -1}, f"seed -1: expected an integer in 0..{MAX_SEED}"),
    ({"seed": 2**64}, f"seed {2**64}: expected an integer in 0..{MAX_SEED}"),
    ({"threshold_rule": 3}, "threshold_rule 3: expected a string"),
])
def test_train_config_refuses_wrong_types_and_seeds(kw, message):
    with pytest.raises(EdgeadError, match=message.replace("(", r"\(").replace(".", r"\.")):
        TrainConfig(**kw)


@pytest.mark.parametrize("kw,message", [
    ({"memory_size": "5"}, "memory_size '5': expected an integer"),
    ({"budget_bytes": 1.5}, "budget 1.5: expected an integer or None"),
    ({"codec": 3}, "codec 3: expected a string or None"),
])
def test_replay_config_refuses_wrong_types(kw, message):
    with pytest.raises(EdgeadError, match=message.replace(".", r"\.")):
        ReplayConfig(**kw)
    assert ReplayConfig(latent_crop=8).latent_crop == "8"  # a crop side as a number still reads


def test_valid_values_still_pass():
    assert TrainConfig(seed=MAX_SEED, lr=1, epochs=2).lr == 1
    assert DetectorConfig.defaults("paste", "mcunet-in3", image_size=64).image_size == 64


@pytest.mark.parametrize("size,message", [(-1, "image_size -1: expected an integer in 16..4096"),
                                          (7, "image_size 7: expected an integer in 16..4096"),
                                          ("64", "image_size '64': expected an integer")])
def test_detector_image_size_refused_at_construction(size, message, tmp_path):
    with pytest.raises(EdgeadError, match=message):
        Detector(image_size=size)
    assert not list(tmp_path.iterdir())


def test_fit_with_a_text_epochs_writes_nothing(tmp_path, synth_root):
    out = tmp_path / "run"
    with pytest.raises(EdgeadError, match="epochs '1': expected an integer"):
        Detector(image_size=64).fit(synth_root, "nut", epochs="1", out=out)
    assert not out.exists()


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_cli_seed_out_of_range_is_a_clear_error_before_writing(seed, tmp_path, synth_root, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(synth_root), "--tasks", "nut", "--image-size", "64", "--seed", seed,
              "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"seed {seed}: expected an integer in 0..{MAX_SEED}" in err
    assert "Traceback" not in err and not Path(out).exists()
