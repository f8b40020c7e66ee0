"""Magnetic-Tile (Huang et al., The Visual Computer 2020) -> MVTec AD layout.

Source layout: MT_<Class>/Imgs/<name>.jpg with <name>.png masks beside. MT_Free holds the defect-free
tiles. The split is fixed and documented: the MT_Free images, sorted by name, are permuted with
numpy's default_rng(seed) (seed 0 by default) and the first `test_fraction` (20%) go to test/good, the rest
to train/good. Defect classes become test/<class> (lower case: blowhole, break, crack, fray, uneven) with
masks binarised at > 127 into ground_truth/<class>/<stem>_mask.png (0/255). The threshold is this dataset's:
its PNG masks carry soft edges and compression noise (grey levels 1..254 around and away from the defects;
any non-zero pixel, the rule for masks in MVTec layout, would widen most defects and some many times over).
A mask with marks that all lie at or below 127 is refused (the threshold would erase its defect without a
word); a mask that is zero everywhere (4 MT_Uneven images of the published copy) is the authors' own label:
kept, counted in dataset.json (`ignored.empty_masks`) and warned about.
Images are decode-checked, then copied byte for byte (no re-encoding). The category is written to a temporary
folder and renamed into place at the end.
"""

from __future__ import annotations

from pathlib import Path

from edgead.data.category_writer import CategoryWriter, command_line, split_normals
from edgead.errors import EdgeadError

NORMAL_CLASS = "MT_Free"
DEFECT_CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
SOURCE_MASK_THRESHOLD = 127  # see the module docstring
LICENSE = ("none stated; the authors welcome use with a citation: Huang, Qiu, Yuan, Surface defect saliency "
           "of magnetic tile, The Visual Computer 36 (2020) 85-96")
SOURCE = "github.com/abin24/Magnetic-tile-defect-datasets. (commit cc4eb530)"


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
                          seed: int = 0, test_fraction: float = 0.2, overwrite: bool = False,
                          skip_bad: bool = False) -> Path:
    """Convert a Magnetic-Tile folder (MT_<Class>/Imgs/) into `<out>/<category>`; returns that folder."""
    src, out = Path(src), Path(out)
    if not (src / NORMAL_CLASS).is_dir():
        raise EdgeadError(f"{src}: not a Magnetic-Tile folder (expected {NORMAL_CLASS}/ and MT_<Defect>/ inside)")
    train, test = split_normals(_pairs(src / NORMAL_CLASS), seed, test_fraction)
    with CategoryWriter(out, category, overwrite=overwrite, skip_bad=skip_bad) as w:
        for split, items in (("train", train), ("test", test)):
            for jpg, _ in items:
                w.add_image(jpg, split, "good")
        for cls in DEFECT_CLASSES:
            if not (src / cls).is_dir():
                continue
            name = cls.removeprefix("MT_").lower()
            for jpg, mask_src in _pairs(src / cls):
                size = w.check_image(jpg)
                mask = None if size is None else w.read_mask_file(mask_src, size, threshold=SOURCE_MASK_THRESHOLD)
                # None: image or mask bad and skipped (skip_bad), or the image is also a training image
                if mask is not None and w.add_image(jpg, "test", name) is not None:
                    w.add_mask(mask, name, jpg.stem)
        return w.finish({
            "dataset": "magnetic-tile", "source": SOURCE, "license": LICENSE, "seed": seed,
            "test_fraction": test_fraction,
            "split": f"{NORMAL_CLASS} sorted by name, seeded split; MT_<Class> -> test/<class>",
            "command": command_line("magnetic-tile", src, out, seed=seed, test_fraction=test_fraction,
                                    skip_bad=skip_bad),
        })
