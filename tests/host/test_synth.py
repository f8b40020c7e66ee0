"""Tests for the synthetic MVTec-layout generator (edgead.data.synth)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgead.data.synth import DEFAULT_CATEGORIES, DEFECT_KINDS, generate_dataset, render_sample
from edgead.errors import EdgeadError

MVTEC = (
    "hazelnut",
    "bottle",
    "cable",
    "capsule",
    "metal_nut",
    "pill",
    "toothbrush",
    "transistor",
    "zipper",
    "screw",
)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    return generate_dataset(out, seed=3, image_size=64, n_train=4, n_test=5)


def test_mvtec_layout(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir()) == sorted(DEFAULT_CATEGORIES)  # no leftover temp dirs
    all_kinds = set()
    for cat in DEFAULT_CATEGORIES:
        root = small_set / cat
        assert [p.name for p in sorted((root / "train" / "good").iterdir())] == [
            f"{i:03d}.png" for i in range(4)
        ]
        assert len(list((root / "test" / "good").glob("*.png"))) == 5
        kinds = sorted(p.name for p in (root / "test").iterdir() if p.name != "good")
        assert len(kinds) >= 3 and set(kinds) <= set(DEFECT_KINDS)
        assert sorted(p.name for p in (root / "ground_truth").iterdir()) == kinds  # no gt for good
        all_kinds |= set(kinds)
        n_defective = 0
        for kind in kinds:
            images = sorted((root / "test" / kind).glob("*.png"))
            assert images
            n_defective += len(images)
            masks = sorted((root / "ground_truth" / kind).glob("*.png"))
            assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
            for img_path, mask_path in zip(images, masks, strict=True):
                img, mask = Image.open(img_path), np.asarray(Image.open(mask_path))
                assert img.size == (64, 64) and img.mode in ("L", "RGB")
                assert mask.dtype == np.uint8 and mask.shape == (64, 64)
                assert set(np.unique(mask)) == {0, 255}
        assert n_defective >= 5
    assert len(all_kinds) >= 3


def test_some_category_is_grayscale_png(small_set: Path) -> None:
    modes = {
        cat: Image.open(small_set / cat / "train" / "good" / "000.png").mode for cat in DEFAULT_CATEGORIES
    }
    assert "L" in modes.values() and "RGB" in modes.values()


def test_deterministic_and_seed_dependent(tmp_path: Path, small_set: Path) -> None:
    again = generate_dataset(tmp_path / "again", seed=3, image_size=64, n_train=4, n_test=5)
    assert _hashes(again) == _hashes(small_set)
    other = generate_dataset(
        tmp_path / "other", categories=("brick", "nut"), seed=4, image_size=64, n_train=4, n_test=5
    )
    a, b = _hashes(small_set), _hashes(other)
    common = [k for k in b if k.endswith(".png") and "ground_truth" not in k]
    assert common and all(a[k] != b[k] for k in common)


@pytest.mark.parametrize("category", ["brick", "grass", "gravel", "nut", "pill", "bottle", "capsule"])
@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_mask_is_exactly_the_changed_pixels(category: str, kind: str) -> None:
    for index in range(2):
        clean, image, mask = render_sample(category, index, 7, 64, kind)
        assert clean.shape == image.shape == (64, 64, 3) and clean.dtype == image.dtype == np.uint8
        assert mask.dtype == bool and mask.shape == (64, 64)
        np.testing.assert_array_equal(mask, np.any(image != clean, axis=-1))
        assert mask.sum() >= 0.003 * 64 * 64
        assert not mask.all()


def test_no_defect_means_identical() -> None:
    clean, image, mask = render_sample("nut", 0, 0, 48, None)
    np.testing.assert_array_equal(clean, image)
    assert not mask.any()
    clean2, _, _ = render_sample("nut", 0, 0, 48, "hole")
    np.testing.assert_array_equal(clean, clean2)  # the defect is painted on the same normal image


def test_defect_kinds_look_different() -> None:
    # Thin lines (scratch, crack) change far fewer pixels than blobs (stain, missing piece).
    areas = {
        k: np.mean([render_sample("pill", i, 1, 96, k)[2].sum() for i in range(4)]) for k in DEFECT_KINDS
    }
    assert areas["scratch"] < areas["missing"] and areas["crack"] < areas["stain"]
    for i in range(4):  # a hole has a dark core whatever its rim looks like
        clean, image, mask = render_sample("nut", i, 1, 96, "hole")
        assert np.percentile(image[mask], 20) < np.percentile(clean[mask], 20) - 30


def test_categories_look_different() -> None:
    def stats(cat: str) -> np.ndarray:
        imgs = np.stack([render_sample(cat, i, 0, 64, None)[0] for i in range(3)]).astype(np.float64)
        rgb = imgs.mean(axis=(0, 1, 2))
        detail = np.abs(np.diff(imgs.mean(-1), axis=2)).mean()  # texture strength
        return np.concatenate([rgb, [imgs.std(), detail, rgb.max() - rgb.min()]])

    cats = list(dict.fromkeys(DEFAULT_CATEGORIES + MVTEC))
    feats = {c: stats(c) for c in cats}
    for i, a in enumerate(cats):
        for b in cats[i + 1 :]:
            assert np.abs(feats[a] - feats[b]).max() > 3.0, (a, b)


def test_unknown_mvtec_names(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "mv", categories=MVTEC[:3], seed=0, image_size=32, n_train=1, n_test=1)
    for cat in MVTEC[:3]:
        assert (out / cat / "train" / "good" / "000.png").is_file()
        assert len([p for p in (out / cat / "test").iterdir() if p.name != "good"]) >= 3
    for cat in MVTEC:  # every name renders every defect kind
        for kind in DEFECT_KINDS:
            clean, image, mask = render_sample(cat, 0, 0, 32, kind)
            np.testing.assert_array_equal(mask, np.any(image != clean, axis=-1))
            assert mask.any()


def test_overwrite_protection(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "o", categories=("nut",), image_size=32, n_train=1, n_test=1)
    before = _hashes(out)
    with pytest.raises(EdgeadError, match="overwrite"):
        generate_dataset(out, categories=("nut",), seed=1, image_size=32, n_train=1, n_test=1)
    assert _hashes(out) == before
    generate_dataset(out, categories=("nut",), seed=1, image_size=32, n_train=2, n_test=1, overwrite=True)
    assert len(list((out / "nut" / "train" / "good").iterdir())) == 2
    assert [p.name for p in out.iterdir()] == ["nut"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"image_size": 16}, "image_size"),
        ({"image_size": 64.0}, "image_size"),
        ({"n_train": 0}, "n_train"),
        ({"n_test": 0}, "n_test"),
        ({"seed": -1}, "seed"),
        ({"categories": ()}, "categories"),
        ({"categories": ("../evil",)}, "evil"),
        ({"categories": ("nut", "nut")}, "duplicates"),
    ],
)
def test_bad_generate_args(tmp_path: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(EdgeadError, match=needle):
        generate_dataset(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_bad_render_args() -> None:
    with pytest.raises(EdgeadError, match="bogus"):
        render_sample("nut", 0, 0, 64, "bogus")
    with pytest.raises(EdgeadError, match="image_size"):
        render_sample("nut", 0, 0, 31, None)
    with pytest.raises(EdgeadError, match="index"):
        render_sample("nut", -1, 0, 64, None)
    with pytest.raises(EdgeadError, match="category"):
        render_sample("", 0, 0, 64, None)


def test_output_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(EdgeadError, match="not a folder"):
        generate_dataset(f, image_size=32, n_train=1, n_test=1)
