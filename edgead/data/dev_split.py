"""Choosing on one half of a test set, reporting on the other: the seeded dev / report split.

A recipe (training budget, batch size, resize mode, ...) picked by its test numbers would be reported with
an optimistic bias. So each category's test images are split once, with a fixed seed, into a DEV half used
to choose and a REPORT half whose numbers are published and were never used to choose. The split is
stratified by defect type (and the good images), so both halves see every kind of defect in proportion.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from edgead.errors import EdgeadError


def dev_report_split(labels: Sequence[int] | np.ndarray, defect_types: Sequence[str], seed: int = 0,
                     dev_fraction: float = 0.5, key: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (dev_idx, report_idx) over a test set.

    Args:
        labels: (N,) 0 good, 1 defective.
        defect_types: (N,) defect type of each image ("good" for good ones); strata are (label, type).
        seed: the split's seed (fixed across recipes and training seeds: every recipe sees the same halves).
        dev_fraction: share of each stratum that goes to dev (rounded; alternately up and down across strata
            so the halves stay balanced).
        key: mixed into the seed (e.g. the category name) so categories get independent splits.

    Returns:
        Sorted index arrays (dev, report): disjoint, together all N; each holds both good and defective images.
    """
    labels = np.asarray(labels, np.int64)
    if labels.ndim != 1 or len(labels) != len(defect_types):
        raise EdgeadError(f"labels ({labels.shape}) and defect_types ({len(defect_types)}): expected (N,) each")
    if not 0.0 < dev_fraction < 1.0:
        raise EdgeadError(f"dev fraction {dev_fraction}: expected a value in (0, 1)")
    for want, what in ((0, "good"), (1, "defective")):
        if (labels == want).sum() < 2:
            raise EdgeadError(f"{key or 'test set'}: {(labels == want).sum()} {what} test image(s); a dev / report "
                              f"split needs at least 2 (one per half)")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    types = np.asarray(defect_types, dtype=object)
    dev: list[np.ndarray] = []
    up = True
    for label in (0, 1):
        for t in sorted(set(types[labels == label])):
            idx = np.flatnonzero((labels == label) & (types == t))
            n = len(idx) * dev_fraction
            k = int(np.ceil(n) if up else np.floor(n)) if n != int(n) else int(n)
            up = not up if n != int(n) else up
            dev.append(rng.permutation(idx)[:k])
    d = np.sort(np.concatenate(dev))
    r = np.setdiff1d(np.arange(len(labels)), d)
    for half, name in ((d, "dev"), (r, "report")):
        if not ((labels[half] == 0).any() and (labels[half] == 1).any()):  # tiny strata rounded away
            raise EdgeadError(f"{key or 'test set'}: the {name} half has no {'good' if (labels[half] == 1).all() else 'defective'} "
                              f"image; too few test images to split")
    return d, r
