"""The data layer: MVTec layout, folder datasets, Magnetic-Tile conversion, task streams, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edgead.data import TaskStream, load_entries, scan_folder, scan_mvtec, split_validation
from edgead.data.magnetic_tile import convert_magnetic_tile
from edgead.errors import EdgeadError
from firmware_sim.preprocess import Preprocess, load_rgb
from tests.conftest import MAGNETIC_TILE


@pytest.fixture
def tree(tmp_path, synth_root):
    dst = tmp_path / "d"
    shutil.copytree(synth_root, dst)
    return dst


def test_mvtec_scan_and_load(synth_root):
    idx = scan_mvtec(synth_root, "nut")
    assert len(idx.train) == 12 and all(e.label == 0 for e in idx.train)
    defects = [e for e in idx.test if e.label == 1]
    assert defects and all(e.mask_path is not None and e.mask_path.is_file() for e in defects)
    assert {e.defect_type for e in defects} >= {"scratch", "hole"}
    split = load_entries(idx.test, Preprocess(image_size=48))
    assert split.images.shape == (len(idx.test), 48, 48, 3) and split.images.dtype == np.uint8
    assert split.masks[split.labels == 0].sum() == 0
    assert all(split.masks[i].any() for i in np.flatnonzero(split.labels == 1))


def test_grayscale_category_becomes_three_channels(synth_root):
    idx = scan_mvtec(synth_root, "brick")
    assert Image.open(idx.train[0].path).mode == "L"  # stored as MVTec's grayscale categories are
    split = load_entries(idx.train[:2], Preprocess(image_size=32))
    assert split.images.shape[-1] == 3
    assert np.array_equal(split.images[..., 0], split.images[..., 2])


def test_normalisation_is_configurable(synth_root):
    img = load_rgb(scan_mvtec(synth_root, "nut").train[0].path)
    a = Preprocess(image_size=32).image(img)
    b = Preprocess(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).image(img)
    assert a.shape == b.shape == (3, 32, 32)
    assert b.min() >= -1.0 and b.max() <= 1.0 and not np.allclose(a, b)


def test_truncated_image_names_file(tree):
    victim = sorted((tree / "nut" / "train" / "good").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    idx = scan_mvtec(tree, "nut")
    with pytest.raises(EdgeadError, match=victim.name):
        load_entries(idx.train, Preprocess(image_size=32))
    with pytest.warns(UserWarning, match="skipped 1"):
        split = load_entries(idx.train, Preprocess(image_size=32), skip_bad=True)
    assert len(split) == len(idx.train) - 1


def test_mask_size_mismatch_names_mask(tree):
    mask = next((tree / "nut" / "ground_truth").rglob("*_mask.png"))
    Image.new("L", (10, 10)).save(mask)
    idx = scan_mvtec(tree, "nut")
    with pytest.raises(EdgeadError, match=f"{mask.name}.*10x10.*expected the same size"):
        load_entries(idx.test, Preprocess(image_size=32))


def test_non_image_file_and_missing_split_and_empty_category(tree):
    (tree / "nut" / "train" / "good" / "notes.txt").write_text("hello")
    with pytest.raises(EdgeadError, match="notes.txt: not an image"):
        scan_mvtec(tree, "nut")
    with pytest.warns(UserWarning):
        assert len(scan_mvtec(tree, "nut", skip_bad=True).train) == 12
    shutil.rmtree(tree / "pill" / "test")
    with pytest.raises(EdgeadError, match="missing test folder"):
        scan_mvtec(tree, "pill")
    for p in (tree / "brick" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(EdgeadError, match="no training images"):
        scan_mvtec(tree, "brick")
    with pytest.raises(EdgeadError, match="unknown category 'zzz'"):
        scan_mvtec(tree, "zzz")


def test_folder_dataset(tmp_path, synth_root):
    good = tmp_path / "good"
    bad = tmp_path / "bad"
    masks = tmp_path / "masks"
    shutil.copytree(synth_root / "nut" / "train" / "good", good)
    shutil.copytree(synth_root / "nut" / "test" / "hole", bad)
    shutil.copytree(synth_root / "nut" / "ground_truth" / "hole", masks)
    idx = scan_folder(good, bad, masks)
    assert len(idx.train) == 12 and all(e.mask_path is not None for e in idx.test)
    next(masks.iterdir()).unlink()
    with pytest.raises(EdgeadError, match="no mask named"):
        scan_folder(good, bad, masks)


def test_validation_split_is_seeded_and_disjoint():
    tr, va = split_validation(20, 0.2, seed=3, key="nut")
    tr2, va2 = split_validation(20, 0.2, seed=3, key="nut")
    assert np.array_equal(va, va2) and len(va) == 4 and not set(tr) & set(va)
    assert not np.array_equal(va, split_validation(20, 0.2, seed=4, key="nut")[1])


def test_task_stream_order_and_errors(synth_root):
    stream = TaskStream(synth_root, ["brick", "nut"])
    assert stream.names == ["brick", "nut"] and [t.index for t in stream] == [0, 1]
    with pytest.raises(EdgeadError, match="unknown category.*'cable'"):
        TaskStream(synth_root, ["nut", "cable"])
    data = stream.tasks[1].load(Preprocess(image_size=32), val_fraction=0.25, seed=0)
    assert len(data.val) == 3 and len(data.train) == 9
    assert not set(data.val.paths) & set(data.train.paths)  # held-out normals never train
    assert not set(data.val.paths) & set(data.test.paths)


def test_convert_magnetic_tile(tmp_path):
    out = convert_magnetic_tile(MAGNETIC_TILE, tmp_path)
    idx = scan_mvtec(tmp_path, "magnetic_tile")
    assert out.name == "magnetic_tile"
    assert len(idx.train) == 762 and sum(e.label == 0 for e in idx.test) == 190  # 952 defect-free, 20% test
    kinds = {e.defect_type for e in idx.test if e.label == 1}
    assert kinds == {"blowhole", "break", "crack", "fray", "uneven"}
    m = np.asarray(Image.open(next((tmp_path / "magnetic_tile" / "ground_truth" / "crack").iterdir())))
    assert set(np.unique(m)) <= {0, 255}
    ignored = json.loads((out / "dataset.json").read_text())["ignored"]
    assert ignored["empty_masks"] == 4 and ignored["bad_images"] == 0  # 4 all-zero MT_Uneven masks, kept
    with pytest.raises(EdgeadError, match="already exists"):
        convert_magnetic_tile(MAGNETIC_TILE, tmp_path)
    first = sorted(p.name for p in (tmp_path / "magnetic_tile" / "test" / "good").iterdir())
    convert_magnetic_tile(MAGNETIC_TILE, tmp_path, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "magnetic_tile" / "test" / "good").iterdir()) == first
