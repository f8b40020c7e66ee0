"""Checking every task's ground-truth masks before anything trains.

Masks follow one rule, `edgead.data.layout.mask_threshold`'s: any non-zero pixel is a defect (0/255, 0/1 and
masks drawn with any other value all work), or above 127 for JPEG masks (compression noise). A mask that cannot be read or does not have its image's size
would otherwise surface only when that task is evaluated, possibly hours into a run; here it is an error
naming the file before the first task trains. A task whose masks are all empty (no defect pixel anywhere)
cannot give pixel metrics and is refused too; single empty masks are allowed (some datasets have them).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from edgead.data.layout import CategoryIndex, mask_threshold
from edgead.errors import EdgeadError
from firmware_sim.errors import UserError
from firmware_sim.preprocess import load_mask

_SKIP_HINT = "pass --skip-bad to skip such images with a warning"


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: cannot read image ({e}); expected a readable PNG, JPEG, BMP or TIFF file") from None


def check_masks(index: CategoryIndex, *, skip_bad: bool = False) -> None:
    """Read every mask of a category's defective test images and check it against its image's size.

    Raises EdgeadError naming the first bad file (unless ``skip_bad``: loading will skip such images), or
    when no mask of the category marks any defect pixel.
    """
    with_masks = [e for e in index.test if e.label == 1 and e.mask_path is not None]
    empty, readable = [], 0
    for e in with_masks:
        try:
            mask = load_mask(e.mask_path, expected_size=_image_size(e.path), threshold=mask_threshold(e.mask_path))
        except UserError as err:
            if skip_bad:
                continue
            raise EdgeadError(f"{err} ({_SKIP_HINT})") from None
        readable += 1
        if not mask.any():
            empty.append(e.mask_path)
    if readable and len(empty) == readable:
        raise EdgeadError(f"{index.root}: all {readable} ground-truth masks are empty (no non-zero pixel), e.g. "
                          f"{empty[0]}; expected defect pixels marked with any non-zero value")
    if empty:
        warnings.warn(f"{index.name}: {len(empty)} of {readable} masks mark no defect pixel; first: {empty[0]}",
                      stacklevel=2)


def check_stream_masks(stream, *, skip_bad: bool = False) -> None:
    """`check_masks` for every task of a TaskStream, in order."""
    for task in stream:
        check_masks(task.index_files(skip_bad), skip_bad=skip_bad)
