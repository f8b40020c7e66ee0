"""Decoding a list of entries into arrays at the training resolution, once.

Images are kept as uint8 (N, S, S, 3) — 192 KiB per image at 256 px — so epochs never decode files again
and raw-image replay stores exactly these bytes. Normalisation happens per batch.

With `Preprocess.resize_mode` ``tile`` one image gives several views (tiles): ``images`` then holds the views
and ``owner`` the image each belongs to, while labels, masks, ``valid`` and paths stay per image (masks in
the frame of the resize mode, see firmware_sim.preprocess). Training treats every view as a sample.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgead.data.layout import Entry, mask_threshold
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
    owner: np.ndarray | None = None  # int64 (M,): the image of each view; None: one view per image
    valid: np.ndarray | None = None  # bool (N, S, S): frame pixels showing the image; None: all of them
    sizes: np.ndarray | None = None  # int64 (N, 2): original (W, H); needed to stitch tiles

    def __len__(self) -> int:
        return len(self.labels)

    def view_owner(self) -> np.ndarray:
        """int64 (M,): for each row of ``images``, the index of its image."""
        return np.arange(len(self.images), dtype=np.int64) if self.owner is None else self.owner

    def subset(self, idx: np.ndarray | list[int]) -> LoadedSplit:
        idx = np.asarray(idx, dtype=np.int64)
        owner = None
        if self.owner is None:
            images = self.images[idx]
        else:  # owners are ascending: each image's views are one contiguous run
            lo, hi = np.searchsorted(self.owner, idx), np.searchsorted(self.owner, idx + 1)
            rows = [np.arange(a, b) for a, b in zip(lo, hi, strict=True)]
            images = self.images[np.concatenate(rows)] if rows else self.images[:0]
            owner = np.repeat(np.arange(len(idx), dtype=np.int64), hi - lo)
        return LoadedSplit(images, self.masks[idx], self.labels[idx],
                           [self.defect_types[i] for i in idx], [self.paths[i] for i in idx], self.has_masks,
                           owner=owner, valid=None if self.valid is None else self.valid[idx],
                           sizes=None if self.sizes is None else self.sizes[idx])

    @staticmethod
    def concat(parts: list[LoadedSplit]) -> LoadedSplit:
        if not parts:
            raise EdgeadError("nothing to concatenate: no data splits given")
        offsets = np.cumsum([0] + [len(p) for p in parts])
        owner = None if all(p.owner is None for p in parts) else \
            np.concatenate([p.view_owner() + o for p, o in zip(parts, offsets, strict=False)])
        valid = None if all(p.valid is None for p in parts) else np.concatenate(
            [p.valid if p.valid is not None else np.ones(p.masks.shape, bool) for p in parts])
        sizes = None if any(p.sizes is None for p in parts) else np.concatenate([p.sizes for p in parts])
        return LoadedSplit(
            np.concatenate([p.images for p in parts]), np.concatenate([p.masks for p in parts]),
            np.concatenate([p.labels for p in parts]), sum((p.defect_types for p in parts), []),
            sum((p.paths for p in parts), []), all(p.has_masks for p in parts),
            owner=owner, valid=valid, sizes=sizes,
        )


def load_entries(entries: list[Entry], pre: Preprocess, *, skip_bad: bool = False,
                 desc: str = "loading") -> LoadedSplit:
    from edgead.console import progress

    s = pre.image_size
    squash = pre.resize_mode == "squash"
    images = np.empty((len(entries), s, s, 3), np.uint8) if squash else None  # squash: no per-image copies
    views: list[np.ndarray] = []
    sizes = np.zeros((len(entries), 2), np.int64)
    masks = np.zeros((len(entries), s, s), bool)
    keep: list[int] = []
    skipped: list[str] = []
    has_masks = True
    for i, e in progress(enumerate(entries), desc, total=len(entries), unit="img"):
        try:
            img = load_rgb(e.path)
            v = pre.resize_uint8(img)[None] if squash else pre.views(img)
            sizes[i] = img.size
            if e.label == 1:
                if e.mask_path is None:
                    has_masks = False
                else:
                    mask = load_mask(e.mask_path, expected_size=img.size, threshold=mask_threshold(e.mask_path))
                    masks[i] = pre.frame_mask(mask) > 0
            if squash:
                images[i] = v[0]
            else:
                views.append(v)
        except UserError as err:
            if not skip_bad:
                raise EdgeadError(f"{err} (pass --skip-bad to skip such files with a warning)") from None
            skipped.append(str(err))
            continue
        keep.append(i)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s); first: {skipped[0]}", stacklevel=2)
    if not keep:
        raise EdgeadError(f"{desc}: no readable images left after skipping {len(skipped)} bad file(s)" if skipped
                          else f"{desc}: no images to load")
    idx = np.asarray(keep)
    labels = np.asarray([entries[i].label for i in keep], np.int64)
    types, paths = [entries[i].defect_type for i in keep], [str(Path(entries[i].path)) for i in keep]
    if squash:
        return LoadedSplit(images[idx], masks[idx], labels, types, paths, has_masks, skipped, sizes=sizes[idx])
    owner = np.repeat(np.arange(len(views), dtype=np.int64), [len(v) for v in views])
    valid = np.stack([pre.frame_valid(tuple(sz)) for sz in sizes[idx]])
    return LoadedSplit(np.concatenate(views), masks[idx], labels, types, paths, has_masks, skipped,
                       owner=owner if pre.resize_mode == "tile" else None, valid=valid, sizes=sizes[idx])
