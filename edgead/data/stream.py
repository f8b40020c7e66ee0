"""Task streams: an ordered list of categories becomes a sequence of tasks (Avalanche's "experiences").

Each task's normal training images are split, seeded, into train and a held-out validation set used for
thresholds and model selection; the test set is never used for either (anomalib #1067).
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgead.data.layout import CategoryIndex, scan_mvtec
from edgead.data.loading import LoadedSplit, load_entries
from edgead.errors import EdgeadError
from firmware_sim.preprocess import Preprocess

# The order of the seed thesis (10 MVTec AD objects).
MVTEC_THESIS_ORDER = (
    "hazelnut", "bottle", "cable", "capsule", "metal_nut", "pill", "toothbrush", "transistor", "zipper", "screw",
)


def split_validation(n: int, fraction: float, seed: int, key: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train_idx, val_idx) over n normal images; at least one of each when n >= 2."""
    if not 0.0 <= fraction < 1.0:
        raise EdgeadError(f"validation fraction {fraction}: expected a value in [0, 1)")
    if n < 1:
        raise EdgeadError("no training images to split")
    n_val = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def subsample(entries: list, max_n: int | None, seed: int, key: str = "") -> list:
    """At most max_n of entries, a seeded draw kept in file order (`--max-train`: a quick trial on a big set)."""
    if max_n is None or len(entries) <= max_n:
        return entries
    if max_n < 1:
        raise EdgeadError(f"--max-train {max_n}: expected 1 or more training images")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode()), 0x7EA1])
    return [entries[i] for i in np.sort(rng.choice(len(entries), max_n, replace=False))]


@dataclass
class TaskData:
    train: LoadedSplit
    val: LoadedSplit  # held-out normals
    test: LoadedSplit


@dataclass(frozen=True)
class Task:
    index: int
    name: str
    root: Path
    max_train: int | None = None  # seeded subsample of the normal training images

    def index_files(self, skip_bad: bool = False) -> CategoryIndex:
        return scan_mvtec(self.root, self.name, skip_bad=skip_bad)

    def load(self, pre: Preprocess, *, val_fraction: float = 0.1, seed: int = 0,
             skip_bad: bool = False) -> TaskData:
        idx = self.index_files(skip_bad)
        normals = load_entries(subsample(idx.train, self.max_train, seed, self.name), pre, skip_bad=skip_bad,
                               desc=f"{self.name} train")
        tr, va = split_validation(len(normals), val_fraction, seed, key=self.name)
        test = load_entries(idx.test, pre, skip_bad=skip_bad, desc=f"{self.name} test")
        if not (test.labels == 1).any() or not (test.labels == 0).any():
            raise EdgeadError(f"{idx.root / 'test'}: needs both good and defective test images for evaluation")
        return TaskData(normals.subset(tr), normals.subset(va), test)


class TaskSequence:
    """What every stream of tasks offers: iteration, length and the task names, in order (``self.tasks``)."""

    tasks: list

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]


def few(items: list, n: int = 8) -> str:
    """A list for an error message: the first `n` items and how many more (a task list can be huge)."""
    shown = ", ".join(repr(str(x)[:60]) for x in items[:n])
    return f"[{shown}{f', ... and {len(items) - n} more' if len(items) > n else ''}]"


class TaskStream(TaskSequence):
    """Categories of one dataset root, in order. Checks every category exists before anything trains."""

    def __init__(self, root: str | Path, categories: list[str] | tuple[str, ...] | None = None,
                 max_train: int | None = None):
        self.root = Path(root)
        self.max_train = max_train
        if not self.root.is_dir():
            raise EdgeadError(f"{self.root}: dataset root not found")
        present = sorted(p.name for p in self.root.iterdir() if (p / "train").is_dir())
        if categories is None:
            ordered = [c for c in MVTEC_THESIS_ORDER if c in present]
            categories = ordered + [c for c in present if c not in ordered]
        if not categories:
            raise EdgeadError(f"{self.root}: no categories found (expected <root>/<category>/train/good)")
        if len(set(categories)) != len(categories):
            twice = sorted(c for c, k in Counter(categories).items() if k > 1)
            raise EdgeadError(f"task list of {len(categories)} names a category twice: {few(twice)}")
        missing = [c for c in categories if c not in present]
        if missing:
            raise EdgeadError(f"unknown categor{'y' if len(missing) == 1 else 'ies'} {few(missing)} in {self.root}; "
                              f"available: {few(present) if present else 'none'}")
        self.tasks = [Task(i, c, self.root, max_train) for i, c in enumerate(categories)]

