"""`data convert` and `data synth` replace a category folder only if edgead wrote it (issue 21: one output-folder
rule for every command that writes a folder).

`--overwrite` used to delete whatever folder had the category's name: the source being converted, if it sat
there, or a user's own folder. The victims' files are compared byte for byte.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgead.data.mpdd import convert_mpdd_metal_plate
from edgead.data.synth import generate_dataset
from edgead.errors import EdgeadError
from firmware_sim.outputs import MARKER, read_marker
from tests.host.test_converters import _mpdd


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_never_replaces_the_source_being_converted(tmp_path):
    src = _mpdd(tmp_path / "data" / "mpdd_metal_plate")  # the download sits where the category would go
    before = _snapshot(src)
    with pytest.raises(EdgeadError, match="--overwrite replaces only a dataset folder written by edgead"):
        convert_mpdd_metal_plate(src, tmp_path / "data", overwrite=True)
    assert _snapshot(src) == before


def test_overwrite_replaces_a_converted_category_marked_or_not(tmp_path):
    src = _mpdd(tmp_path / "src")
    [cat] = convert_mpdd_metal_plate(src, tmp_path / "out", seed=0)
    assert read_marker(cat) == "dataset"
    (cat / MARKER).unlink()  # converted before the marker: its dataset.json says what it is
    [again] = convert_mpdd_metal_plate(src, tmp_path / "out", seed=1, overwrite=True)
    assert again == cat and read_marker(cat) == "dataset"


def test_synth_overwrite_never_replaces_a_users_folder(tmp_path):
    mine = tmp_path / "data" / "nut"
    mine.mkdir(parents=True)
    (mine / "photo.jpg").write_bytes(os.urandom(300))
    before = _snapshot(mine)
    with pytest.raises(EdgeadError, match="replaces only a dataset folder"):
        generate_dataset(tmp_path / "data", ("nut",), image_size=32, n_train=1, n_test=1, overwrite=True)
    assert _snapshot(mine) == before
    generate_dataset(tmp_path / "data", ("pill",), image_size=32, n_train=1, n_test=1)  # beside it: fine
    generate_dataset(tmp_path / "data", ("pill",), seed=2, image_size=32, n_train=2, n_test=1, overwrite=True)
    assert len(list((tmp_path / "data" / "pill" / "train" / "good").iterdir())) == 2
