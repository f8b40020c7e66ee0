"""MPDD metal_plate, supervised re-split (BupeshKumarR/defect-segmentation-for-mpdd) -> MVTec AD layout.

Source layout: {train,val,test}/images/<name>.png with the same name in {train,val,test}/masks/. That split
was made for supervised segmentation and mixes normal and defective images in every part, so it is
dropped: an image whose mask is empty is normal, and all normals (sorted by source split and name) are
re-split with `split_normals` (seeded) into train/good and test/good; every defective image goes to
test/defective with its mask (binarised at > 127). The masks of the published copy are strictly 0/255
(161 masks, no other value), so > 127 and > 0 agree on them; > 127 keeps a stray low pixel (an edit, a
resave) from turning a normal image into a defective one. The default test fraction, 1/3, keeps about as many
good test images as the original MPDD metal_plate (26 of 80).
"""

from __future__ import annotations

from pathlib import Path

from edgead.data.category_writer import CategoryWriter, command_line, image_size, split_normals
from edgead.errors import EdgeadError
from firmware_sim.errors import UserError
from firmware_sim.preprocess import is_image_file, load_mask

SOURCE_SPLITS = ("train", "val", "test")
DEFECT = "defective"
MASK_THRESHOLD = 127  # see the module docstring
TEST_FRACTION = 1 / 3
LICENSE = "none stated in the copy; upstream MPDD (Jezek et al., 2021): research use only, do not redistribute"
SOURCE = ("github.com/BupeshKumarR/defect-segmentation-for-mpdd (commit 5d8b9cdd), data_supervised/metal_plate; "
          "upstream MPDD, Jezek et al. 2021")


def _pairs(src: Path) -> list[tuple[str, Path, Path]]:
    pairs = []
    for split in SOURCE_SPLITS:
        images, masks = src / split / "images", src / split / "masks"
        if not images.is_dir() or not masks.is_dir():
            raise EdgeadError(f"{src / split}: expected images/ and masks/ folders (MPDD supervised layout "
                              f"{{{','.join(SOURCE_SPLITS)}}}/{{images,masks}}/<name>.png)")
        for img in sorted(p for p in images.iterdir() if p.is_file() and is_image_file(p)):
            mask = masks / img.name
            if not mask.is_file():
                raise EdgeadError(f"{img}: no mask {mask} beside it")
            pairs.append((split, img, mask))
    if not pairs:
        raise EdgeadError(f"{src}: no images in {'/'.join(SOURCE_SPLITS)}/images")
    return pairs


def convert_mpdd_metal_plate(src: str | Path, out: str | Path, *, seed: int = 0,
                             test_fraction: float = TEST_FRACTION, category: str = "mpdd_metal_plate",
                             overwrite: bool = False, skip_bad: bool = False) -> list[Path]:
    """Convert the MPDD metal_plate supervised folder into `<out>/<category>`.

    Returns:
        [the category folder written]
    """
    src, out = Path(src), Path(out)
    normals, defects = [], []
    for split, img, mask_path in _pairs(src):
        try:
            mask = load_mask(mask_path, expected_size=image_size(img), threshold=MASK_THRESHOLD)
        except UserError as e:
            raise EdgeadError(str(e)) from None
        (defects if mask.any() else normals).append((split, img, mask))
    train, test = split_normals(normals, seed, test_fraction)
    with CategoryWriter(out, category, overwrite=overwrite, skip_bad=skip_bad) as w:
        # Source names repeat across splits in other copies of MPDD: keep the split in the name.
        for part, items in (("train", train), ("test", test)):
            for split, img, _ in items:
                w.add_image(img, part, "good", _name(split, img))
        for split, img, mask in defects:
            name = _name(split, img)
            if w.add_image(img, "test", DEFECT, name) is not None:  # None: a bad image skipped (skip_bad)
                w.add_mask(mask, DEFECT, Path(name).stem)
        return [w.finish({
            "dataset": "mpdd-metal-plate", "source": SOURCE, "license": LICENSE, "seed": seed,
            "test_fraction": test_fraction,
            "split": "normal = empty mask; normals of all source splits re-split (seeded); every defective "
                     "image -> test/defective",
            "command": command_line("mpdd-metal-plate", src, out, seed=seed, test_fraction=test_fraction,
                                    skip_bad=skip_bad),
        })]


def _name(split: str, img: Path) -> str:
    return img.name if img.name.startswith(f"{split}_") else f"{split}_{img.name}"
