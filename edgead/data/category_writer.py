"""What every dataset converter shares: the seeded normal split, image and mask writing, dataset.json.

A converter opens a `CategoryWriter`, adds images (copied byte for byte, never re-encoded) and masks
(written as 0/255 PNG `ground_truth/<defect>/<stem>_mask.png`), then `finish()` writes
`dataset.json` and renames the temporary folder into place, so a failed or interrupted conversion never
leaves a half-written category behind. The counts in dataset.json are taken from the files on disk.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from edgead.data.layout import GOOD
from edgead.errors import EdgeadError
from firmware_sim.atomic import atomic_write_json
from firmware_sim.errors import UserError
from firmware_sim.preprocess import load_mask

SCHEMA = "edgead-dataset/1"
DATASET_JSON = "dataset.json"


def split_normals(items: list, seed: int, test_fraction: float) -> tuple[list, list]:
    """Seeded split of normal images into (train, test), keeping the input order inside each part.

    `items` must already be in a fixed order (e.g. sorted by name). numpy's default_rng(seed) permutes the
    indices; the first round(n * test_fraction) go to test.

    Returns:
        (train_items, test_items)
    """
    if not 0.0 < test_fraction < 1.0:
        raise EdgeadError(f"test fraction {test_fraction}: expected a value in (0, 1)")
    perm = np.random.default_rng(seed).permutation(len(items))
    test_ids = set(perm[: int(round(len(items) * test_fraction))].tolist())
    return ([x for i, x in enumerate(items) if i not in test_ids],
            [x for i, x in enumerate(items) if i in test_ids])


def command_line(name: str, src: str | Path, out: str | Path, **options) -> str:
    """The `edgead data convert` command that reproduces a conversion (options with value None left out)."""
    parts = ["edgead", "data", "convert", name, str(src), str(out)]
    for key, value in options.items():
        if value is not None:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def image_size(path: Path, shown: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file, read from its header; errors name `shown` (default: the path)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise EdgeadError(f"{shown or path}: cannot read image ({e})") from None


class CategoryWriter:
    """Builds `<out>/<category>/` in MVTec AD layout inside a temporary folder; use as a context manager.

    Args:
        out: the dataset root the category goes under.
        category: folder name of the category.
        overwrite: replace an existing non-empty category folder (otherwise that is an error).
    """

    def __init__(self, out: str | Path, category: str, *, overwrite: bool = False):
        self.out, self.category = Path(out), category
        self.final = self.out / category
        if self.final.exists() and any(self.final.iterdir()) and not overwrite:
            raise EdgeadError(f"{self.final}: already exists and is not empty (pass --overwrite to replace it)")
        self.out.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f".{category}.", dir=self.out))

    def __enter__(self) -> CategoryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def scratch(self) -> Path:
        """A folder inside the temporary category for unpacked inputs; removed by `finish()`."""
        path = self.root / ".scratch"
        path.mkdir(exist_ok=True)
        return path

    def add_image(self, src: Path, split: str, defect_type: str, name: str | None = None) -> Path:
        """Copy `src` byte for byte to `<split>/<defect_type>/<name or src.name>`; returns the new path."""
        dst = self.root / split / defect_type / (name or src.name)
        if dst.exists():
            raise EdgeadError(f"{src}: a second image named {dst.name} in {split}/{defect_type}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    def add_mask(self, mask: np.ndarray, defect_type: str, stem: str) -> Path:
        """Write a boolean (H, W) mask as 0/255 `ground_truth/<defect_type>/<stem>_mask.png`."""
        dst = self.root / "ground_truth" / defect_type / f"{stem}_mask.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).save(dst)
        return dst

    def add_mask_file(self, src: Path, size: tuple[int, int], defect_type: str, stem: str,
                      shown: str | None = None) -> Path:
        """Binarise a mask file (> 127, as the loader does) that must be `size` (W, H); errors name `shown`."""
        try:
            mask = load_mask(src, expected_size=size)
        except UserError as e:
            msg = str(e)
            raise EdgeadError(msg.replace(str(src), shown, 1) if shown else msg) from None
        return self.add_mask(mask, defect_type, stem)

    def counts(self) -> dict:
        """Files on disk per split and defect type: {"train": {...}, "test": {...}, "ground_truth": {...}}."""
        out = {}
        for split in ("train", "test", "ground_truth"):
            folder = self.root / split
            kinds = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
            out[split] = {d.name: sum(1 for f in d.iterdir() if f.is_file()) for d in kinds}
        return out

    def finish(self, info: dict) -> Path:
        """Check the category is usable, write dataset.json (`info` + counts) and move it into place.

        Returns:
            the final category folder `<out>/<category>`.
        """
        shutil.rmtree(self.root / ".scratch", ignore_errors=True)
        counts = self.counts()
        if not counts["train"].get(GOOD):
            raise EdgeadError(f"{self.category}: no normal training images found in the source")
        if not any(n for k, n in counts["test"].items() if k != GOOD):
            raise EdgeadError(f"{self.category}: no defective test images found in the source")
        doc = {"schema": SCHEMA, "category": self.category, **info, "counts": counts}
        doc["pixel_labels"] = bool(counts["ground_truth"])
        atomic_write_json(self.root / DATASET_JSON, doc)
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.root, self.final)
        return self.final
