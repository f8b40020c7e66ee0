"""Magnetic-Tile (Huang et al., The Visual Computer 2020) -> MVTec AD layout.

Source layout: MT_<Class>/Imgs/<name>.jpg with <name>.png masks beside. MT_Free holds the defect-free
tiles. The split is fixed and documented: the MT_Free images, sorted by name, are permuted with
numpy's default_rng(seed) (seed 0 by default) and the first `test_fraction` (20%) go to test/good, the rest
to train/good. Defect classes become test/<class> (lower case: blowhole, break, crack, fray, uneven) with
masks binarised at > 127 into ground_truth/<class>/<stem>_mask.png (0/255). The threshold is this dataset's:
its PNG masks carry soft edges and compression noise (grey levels 1..254 around and away from the defects;
any non-zero pixel, the rule for masks in MVTec layout, would widen most defects and some many times over).
Images are copied byte for byte (no re-encoding). The category is written to a temporary folder and renamed
into place at the end.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from edgead.errors import EdgeadError
from edgead.outputs import public_mkdtemp
from firmware_sim.preprocess import load_mask, load_rgb

NORMAL_CLASS = "MT_Free"
DEFECT_CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
SOURCE_MASK_THRESHOLD = 127  # see the module docstring


def _pairs(class_dir: Path) -> list[tuple[Path, Path]]:
    imgs = class_dir / "Imgs"
    if not imgs.is_dir():
        raise EdgeadError(f"{imgs}: missing (expected Magnetic-Tile layout MT_<Class>/Imgs/<name>.jpg + <name>.png)")
    pairs = []
    for jpg in sorted(imgs.glob("*.jpg")):
        mask = jpg.with_suffix(".png")
        if not mask.is_file():
            raise EdgeadError(f"{jpg}: no mask {mask.name} beside it")
        pairs.append((jpg, mask))
    if not pairs:
        raise EdgeadError(f"{imgs}: no .jpg images")
    return pairs


def convert_magnetic_tile(src: str | Path, out: str | Path, *, category: str = "magnetic_tile",
                          seed: int = 0, test_fraction: float = 0.2, overwrite: bool = False) -> Path:
    src, out = Path(src), Path(out)
    if not (src / NORMAL_CLASS).is_dir():
        raise EdgeadError(f"{src}: not a Magnetic-Tile folder (expected {NORMAL_CLASS}/ and MT_<Defect>/ inside)")
    if not 0.0 < test_fraction < 1.0:
        raise EdgeadError(f"test fraction {test_fraction}: expected a value in (0, 1)")
    final = out / category
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise EdgeadError(f"{final}: already exists and is not empty (pass --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = public_mkdtemp(f".{category}.", out)
    try:
        free = _pairs(src / NORMAL_CLASS)
        perm = np.random.default_rng(seed).permutation(len(free))
        n_test = int(round(len(free) * test_fraction))
        test_ids = set(perm[:n_test].tolist())
        for i, (jpg, _) in enumerate(free):
            _copy(jpg, tmp / ("test" if i in test_ids else "train") / "good" / jpg.name)
        for cls in DEFECT_CLASSES:
            if not (src / cls).is_dir():
                continue
            name = cls.removeprefix("MT_").lower()
            for jpg, mask_src in _pairs(src / cls):
                _copy(jpg, tmp / "test" / name / jpg.name)
                mask = load_mask(mask_src, expected_size=load_rgb(jpg).size, threshold=SOURCE_MASK_THRESHOLD)
                dst = tmp / "ground_truth" / name / f"{jpg.stem}_mask.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(dst)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
