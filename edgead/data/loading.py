"""Decoding a list of entries into arrays at the training resolution, once.

Images are kept as uint8 (N, S, S, 3) — 192 KiB per image at 256 px — so epochs never decode files again
and raw-image replay stores exactly these bytes. Normalisation happens per batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgead.data.layout import Entry
from edgead.errors import EdgeadError
from firmware_sim.errors import UserError
from firmware_sim.preprocess import Preprocess, load_mask, load_rgb


@dataclass
class LoadedSplit:
    images: np.ndarray  # uint8 (N, S, S, 3)
    masks: np.ndarray  # bool (N, S, S); all False for normal images
    labels: np.ndarray  # int64 (N,)
    defect_types: list[str]
    paths: list[str]
    has_masks: bool = True  # False when anomalous images came without masks (pixel metrics unavailable)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray | list[int]) -> LoadedSplit:
        idx = np.asarray(idx, dtype=np.int64)
        return LoadedSplit(self.images[idx], self.masks[idx], self.labels[idx],
                           [self.defect_types[i] for i in idx], [self.paths[i] for i in idx], self.has_masks)

    @staticmethod
    def concat(parts: list[LoadedSplit]) -> LoadedSplit:
        if not parts:
            raise EdgeadError("nothing to concatenate: no data splits given")
        return LoadedSplit(
            np.concatenate([p.images for p in parts]), np.concatenate([p.masks for p in parts]),
            np.concatenate([p.labels for p in parts]), sum((p.defect_types for p in parts), []),
            sum((p.paths for p in parts), []), all(p.has_masks for p in parts),
        )


def load_entries(entries: list[Entry], pre: Preprocess, *, skip_bad: bool = False,
                 desc: str = "loading") -> LoadedSplit:
    from edgead.console import progress

    s = pre.image_size
    images = np.empty((len(entries), s, s, 3), np.uint8)
    masks = np.zeros((len(entries), s, s), bool)
    keep: list[int] = []
    skipped: list[str] = []
    has_masks = True
    for i, e in progress(enumerate(entries), desc, total=len(entries), unit="img"):
        try:
            img = load_rgb(e.path)
            images[i] = pre.resize_uint8(img)
            if e.label == 1:
                if e.mask_path is None:
                    has_masks = False
                else:
                    masks[i] = pre.mask(load_mask(e.mask_path, expected_size=img.size)) > 0
        except UserError as err:
            if not skip_bad:
                raise EdgeadError(f"{err} (pass --skip-bad to skip such files with a warning)") from None
            skipped.append(str(err))
            continue
        keep.append(i)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s); first: {skipped[0]}", stacklevel=2)
    if not keep:
        raise EdgeadError("no readable images left after skipping bad files")
    idx = np.asarray(keep)
    return LoadedSplit(images[idx], masks[idx], np.asarray([entries[i].label for i in keep], np.int64),
                       [entries[i].defect_type for i in keep], [str(Path(entries[i].path)) for i in keep],
                       has_masks, skipped)
