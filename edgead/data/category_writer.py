"""What every dataset converter shares: the seeded normal split, image and mask writing, dataset.json.

A converter opens a `CategoryWriter`, adds images (copied byte for byte, never re-encoded) and masks
(written as 0/255 PNG `ground_truth/<defect>/<stem>_mask.png`), then `finish()` writes
`dataset.json` and renames the temporary folder into place, so a failed or interrupted conversion never
leaves a half-written category behind. The counts in dataset.json are taken from the files on disk.

Nothing is copied on trust: every image is decoded in full first (`verify_image`: PIL's pixel limit is
checked from the header before any pixel is decoded, then `verify()` and a full decode, which catches
truncated files that `verify()` alone lets through). A bad image stops the conversion with its name, or with
`skip_bad` is left out and counted in dataset.json (`ignored.bad_images`), never counted as a normal. A
defect image whose mask marks no pixel is counted there too (`ignored.empty_masks`) and warned about. A test
image with the same bytes as a training image is left out of test (`ignored.test_images_also_in_train`):
scored on a picture it trained on, a detector looks better than it is (the published battery-weld split
has 7 such good images; converters add training images first).
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from edgead.data.layout import GOOD
from edgead.errors import EdgeadError
from edgead.outputs import check_out, public_mkdtemp
from firmware_sim.atomic import atomic_write_json
from firmware_sim.errors import UserError
from firmware_sim.outputs import publish, write_marker
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
    """The `edgead data convert` command that reproduces a conversion (options with value None or False left
    out; True ones as a bare flag)."""
    parts = ["edgead", "data", "convert", name, str(src), str(out)]
    for key, value in options.items():
        if value is True:
            parts.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(parts)


SKIP_HINT = "pass --skip-bad to leave such images out"
EXAMPLES = 5  # bad or empty files named in dataset.json


def verify_image(path: Path, shown: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file after checking it decodes in full, within PIL's pixel limit.

    Raises EdgeadError naming `shown` (default: the path) for a file that is not an image, is truncated or
    corrupt, or is too large to decode safely.
    """
    shown = shown or str(path)
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse both (Image.open checks the
            # header's size before anything is decoded).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size = im.size
                im.verify()  # chunk CRCs and structure
            with Image.open(path) as im:
                im.load()  # every pixel: truncated JPEG/PNG data fails only here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise EdgeadError(f"{shown}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as e:
        reason = str(e).replace(str(path), "it")  # PIL quotes the path: a scratch copy's means nothing to a user
        raise EdgeadError(f"{shown}: cannot read image ({reason}); expected a readable PNG, JPEG, BMP or TIFF "
                          "file") from None
    return size


def image_size(path: Path, shown: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file, read from its header; errors name `shown` (default: the path)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise EdgeadError(f"{shown or path}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise EdgeadError(f"{shown or path}: cannot read image ({e})") from None


class CategoryWriter:
    """Builds `<out>/<category>/` in MVTec AD layout inside a temporary folder; use as a context manager.

    Args:
        out: the dataset root the category goes under.
        category: folder name of the category.
        overwrite: replace an existing non-empty category folder (otherwise that is an error).
        skip_bad: leave bad images (and their masks) out with a count in dataset.json instead of stopping.
    """

    def __init__(self, out: str | Path, category: str, *, overwrite: bool = False, skip_bad: bool = False):
        self.out, self.category = Path(out), category
        self.skip_bad = skip_bad
        self.bad: list[str] = []  # what was left out, with the reason
        self.empty_masks: list[str] = []  # "<defect>/<stem>" of defect images whose mask marks nothing
        self._checked: dict[Path, tuple[int, int] | None] = {}
        self._train_digests: dict[str, str] = {}  # sha256 -> the training image's name
        self.in_train: list[str] = []  # test images left out: the same bytes as a training image
        # The output-folder rule (edgead.outputs): resolved first; --overwrite replaces only a category this tool
        # converted (its marker or dataset.json), never a source folder or a user's folder of the same name.
        self.final = check_out(self.out / category, kind="dataset", force=overwrite, what="category folder",
                               flag="--overwrite")
        self.out = self.final.parent
        self.out.mkdir(parents=True, exist_ok=True)
        self.root = Path(public_mkdtemp(f".{category}.", self.out))

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

    def reject(self, message: str) -> None:
        """A bad input file: an error (naming it, from `message`), or with skip_bad recorded and left out."""
        if not self.skip_bad:
            raise EdgeadError(f"{message} ({SKIP_HINT})")
        self.bad.append(message)

    def check_image(self, src: Path, shown: str | None = None) -> tuple[int, int] | None:
        """(width, height) of `src` after a full decode check (`verify_image`); None when it is bad and
        skip_bad is set (recorded). Each file is decoded once however often it is asked about."""
        key = Path(src)
        if key not in self._checked:
            try:
                self._checked[key] = verify_image(key, shown)
            except EdgeadError as e:
                self.reject(str(e))
                self._checked[key] = None
        return self._checked[key]

    def add_image(self, src: Path, split: str, defect_type: str, name: str | None = None,
                  shown: str | None = None) -> Path | None:
        """Copy `src` byte for byte to `<split>/<defect_type>/<name or src.name>` once it decodes in full;
        returns the new path, or None when the image is bad and skip_bad is set, or when it is a test image
        with the bytes of a training image (counted, see the module docstring). Errors name `shown`."""
        if self.check_image(src, shown) is None:
            return None
        digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()
        if split == "train":
            self._train_digests.setdefault(digest, name or src.name)
        elif digest in self._train_digests:
            self.in_train.append(f"{defect_type}/{name or src.name} = train/{self._train_digests[digest]}")
            return None
        dst = self.root / split / defect_type / (name or src.name)
        if dst.exists():
            raise EdgeadError(f"{src}: a second image named {dst.name} in {split}/{defect_type}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    def add_mask(self, mask: np.ndarray, defect_type: str, stem: str) -> Path:
        """Write a boolean (H, W) mask as 0/255 `ground_truth/<defect_type>/<stem>_mask.png`; an empty one
        is counted (`ignored.empty_masks`) and warned about at `finish()`."""
        mask = np.asarray(mask, bool)
        if not mask.any():
            self.empty_masks.append(f"{defect_type}/{stem}")
        dst = self.root / "ground_truth" / defect_type / f"{stem}_mask.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(dst)
        return dst

    def read_mask_file(self, src: Path, size: tuple[int, int], shown: str | None = None,
                       threshold: int = 127) -> np.ndarray | None:
        """A source mask file binarised at > ``threshold`` (sources may carry soft edges or compression noise,
        so mid-grey by default); it must be `size` (W, H). Errors name `shown`.

        A mask with marks but none above the threshold is refused (or skipped with skip_bad: None): the
        threshold would turn a faintly drawn defect into an empty mask without a word. A mask that is zero
        everywhere is the source's own statement and is kept (then counted by `add_mask`).
        """
        shown = shown or str(src)
        try:
            mask = load_mask(src, expected_size=size, threshold=threshold)
            if mask.any() or threshold <= 0:
                return mask
            with Image.open(src) as im:  # already decoded once by load_mask: a readable file
                top = int(np.asarray(im).max(initial=0))
        except UserError as e:
            self.reject(str(e).replace(str(src), shown, 1))
            return None
        if top > 0:
            self.reject(f"{shown}: the mask has no pixel above {threshold} (values up to {top}), so its defect "
                        f"would vanish; expected the defect marked above {threshold} (0/255 masks)")
            return None
        return mask

    def add_mask_file(self, src: Path, size: tuple[int, int], defect_type: str, stem: str,
                      shown: str | None = None, threshold: int = 127) -> Path | None:
        """`read_mask_file`, then `add_mask`; None when the mask was bad and skip_bad is set."""
        mask = self.read_mask_file(src, size, shown, threshold)
        return None if mask is None else self.add_mask(mask, defect_type, stem)

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
        ignored = {**info.pop("ignored", {}), "bad_images": len(self.bad),
                   "bad_image_examples": self.bad[:EXAMPLES], "empty_masks": len(self.empty_masks),
                   "empty_mask_examples": self.empty_masks[:EXAMPLES],
                   "test_images_also_in_train": len(self.in_train),
                   "test_images_also_in_train_examples": self.in_train[:EXAMPLES]}
        if self.in_train:
            warnings.warn(f"{self.category}: {len(self.in_train)} test image(s) left out, byte for byte the same "
                          f"as a training image; first: {self.in_train[0]}", stacklevel=2)
        if self.bad:
            warnings.warn(f"{self.category}: {len(self.bad)} unreadable image(s) skipped (--skip-bad), not "
                          f"counted; first: {self.bad[0]}", stacklevel=2)
        if self.empty_masks:
            warnings.warn(f"{self.category}: {len(self.empty_masks)} defect image(s) whose source masks mark no "
                          f"defect pixel (kept, pixel metrics see no defect there); first: {self.empty_masks[0]}",
                          stacklevel=2)
        doc = {"schema": SCHEMA, "category": self.category, **info, "ignored": ignored, "counts": counts}
        doc["pixel_labels"] = bool(counts["ground_truth"])
        atomic_write_json(self.root / DATASET_JSON, doc)
        write_marker(self.root, "dataset")
        publish(self.root, self.final)
        return self.final
