"""Finding the files of a category: the MVTec AD layout and a generic folder layout (anomalib's Folder).

Scanning only lists files and pairs images with masks; decoding happens in `edgead.data.loading`, so
errors there name the exact file. Scanning also warns about what would silently skew the results: JPEG masks
(binarised at > 127, see `mask_threshold`) and one file in two roles (a training image that is also a test
image, a normal that is also an abnormal), by path or by identical content.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from edgead.errors import EdgeadError
from firmware_sim.preprocess import is_image_file

GOOD = "good"
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg")


def mask_threshold(path: str | Path) -> int:
    """How a mask file is binarised (values above this are defect): any non-zero pixel (0/255, 0/1 and masks
    drawn with any value work alike), but above 127 for a JPEG mask, whose compression noise around the
    edges would otherwise count as defect (widening every defect by a rim of noise)."""
    return 127 if Path(path).suffix.lower() in LOSSY_MASK_SUFFIXES else 0


@dataclass(frozen=True)
class Entry:
    path: Path
    label: int  # 0 normal, 1 anomalous
    defect_type: str  # "good" for normal images
    mask_path: Path | None = None


@dataclass
class CategoryIndex:
    name: str
    root: Path
    train: list[Entry]
    test: list[Entry]
    skipped: list[str] = field(default_factory=list)  # files ignored, with the reason


def _images_in(folder: Path, skip_bad: bool, skipped: list[str]) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if not is_image_file(p):
            msg = f"{p}: not an image file (expected .png, .jpg, .jpeg, .bmp, .tif, .webp)"
            if not skip_bad:
                raise EdgeadError(msg + "; remove it or pass --skip-bad")
            skipped.append(msg)
            continue
        files.append(p)
    return files


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise EdgeadError(f"{path}: missing {what} folder (MVTec AD layout: <root>/<category>/train/good, "
                          f"<root>/<category>/test/<good|defect>, <root>/<category>/ground_truth/<defect>)")
    return path


def scan_mvtec(root: str | Path, category: str, *, skip_bad: bool = False) -> CategoryIndex:
    """`<root>/<category>/train/good`, `test/<good|defect>`, `ground_truth/<defect>/<stem>_mask.png`."""
    root = Path(root)
    if not root.is_dir():
        raise EdgeadError(f"{root}: dataset root not found")
    cat_dir = root / category
    if not cat_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise EdgeadError(f"{cat_dir}: unknown category {category!r}; categories under {root}: {found or 'none'}")
    skipped: list[str] = []
    train_files = _images_in(_require_dir(cat_dir / "train" / GOOD, "train/good"), skip_bad, skipped)
    if not train_files:
        raise EdgeadError(f"{cat_dir / 'train' / GOOD}: no training images (expected normal images here)")
    train = [Entry(p, 0, GOOD) for p in train_files]

    test: list[Entry] = []
    test_dir = _require_dir(cat_dir / "test", "test")
    image_level = _image_level_only(cat_dir)
    for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        for p in _images_in(defect_dir, skip_bad, skipped):
            if defect_dir.name == GOOD:
                test.append(Entry(p, 0, GOOD))
                continue
            mask = _find_mask(cat_dir / "ground_truth" / defect_dir.name, p.stem)
            if mask is None and not image_level:
                msg = (f"{p}: no ground-truth mask; expected "
                       f"{cat_dir / 'ground_truth' / defect_dir.name / (p.stem + '_mask.png')}")
                if not skip_bad:
                    raise EdgeadError(msg)
                skipped.append(msg)
                continue
            test.append(Entry(p, 1, defect_dir.name, mask))
    if not test:
        raise EdgeadError(f"{test_dir}: no test images (expected test/good and test/<defect> folders)")
    _warn_skipped(skipped)
    _warn_lossy_masks(test)
    _warn_shared_files({"train/good": [e.path for e in train],
                        "test": [e.path for e in test]})
    return CategoryIndex(category, cat_dir, train, test, skipped)


def _image_level_only(cat_dir: Path) -> bool:
    """True when the category's dataset.json (written by `edgead data convert`) says it has no pixel labels:
    its defective images then come without masks and pixel metrics are n/a, rather than a missing mask
    being an error."""
    path = cat_dir / "dataset.json"
    if not path.is_file():
        return False
    try:
        doc = json.loads(path.read_text())
    except RecursionError:
        raise EdgeadError(f"{path}: not readable JSON (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeadError(f"{path}: not readable JSON ({e})") from None
    return isinstance(doc, dict) and doc.get("pixel_labels") is False


def _find_mask(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask.png", f"{stem}.png", f"{stem}_mask.bmp", f"{stem}_mask.jpg"):
        if (folder / name).is_file():
            return folder / name
    return None


def scan_folder(
    normal_dir: str | Path,
    abnormal_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    *,
    normal_test_dir: str | Path | None = None,
    name: str | None = None,
    skip_bad: bool = False,
) -> CategoryIndex:
    """A generic folder dataset: normal images (train), abnormal images (test) with optional masks.

    Masks are matched by file stem (`<stem>.png` or `<stem>_mask.png`); an abnormal image with no mask in
    a given mask_dir is an error, and with no mask_dir at all pixel metrics are unavailable. Normal test
    images come from `normal_test_dir` if given, otherwise the split is made by `edgead.data.stream`.
    """
    normal_dir = Path(normal_dir)
    if not normal_dir.is_dir():
        raise EdgeadError(f"{normal_dir}: normal image folder not found")
    skipped: list[str] = []
    train = [Entry(p, 0, GOOD) for p in _images_in(normal_dir, skip_bad, skipped)]
    if not train:
        raise EdgeadError(f"{normal_dir}: no normal images")
    test: list[Entry] = []
    if normal_test_dir is not None:
        if not Path(normal_test_dir).is_dir():
            raise EdgeadError(f"{normal_test_dir}: normal test image folder not found")
        test += [Entry(p, 0, GOOD) for p in _images_in(Path(normal_test_dir), skip_bad, skipped)]
    if abnormal_dir is not None:
        abnormal_dir = Path(abnormal_dir)
        if not abnormal_dir.is_dir():
            raise EdgeadError(f"{abnormal_dir}: abnormal image folder not found")
        for p in _images_in(abnormal_dir, skip_bad, skipped):
            mask = None
            if mask_dir is not None:
                if not Path(mask_dir).is_dir():
                    raise EdgeadError(f"{mask_dir}: mask folder not found")
                mask = _find_mask(Path(mask_dir), p.stem)
                if mask is None:
                    raise EdgeadError(f"{p}: no mask named {p.stem}.png or {p.stem}_mask.png in {mask_dir}")
                if _same_file(mask, p):  # e.g. --mask given the abnormal folder through another path
                    raise EdgeadError(f"{p}: its mask {mask} is the image itself; expected a separate mask "
                                      "file (white = defect)")
            test.append(Entry(p, 1, "abnormal", mask))
    _warn_skipped(skipped)
    _warn_lossy_masks(test)
    _warn_shared_files({"normal": [e.path for e in train],
                        "normal test": [e.path for e in test if e.label == 0],
                        "abnormal": [e.path for e in test if e.label == 1]})
    return CategoryIndex(name or normal_dir.name, normal_dir, train, test, skipped)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _warn_lossy_masks(test: list[Entry]) -> None:
    lossy = [e.mask_path for e in test if e.mask_path is not None and mask_threshold(e.mask_path) > 0]
    if lossy:
        warnings.warn(f"{len(lossy)} mask(s) are JPEG, e.g. {lossy[0]}: lossy compression adds grey noise "
                      f"around every edge, so they are binarised at > {mask_threshold(lossy[0])} instead of any "
                      "non-zero value; save masks as PNG to keep them exact", stacklevel=3)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _warn_shared_files(roles: dict[str, list[Path]]) -> None:
    """Warn when one file (the same path, a link to it, or identical bytes) is listed in two roles.

    Only files whose size another role's file shares are hashed, so a normal dataset costs one stat each.
    """
    by_size: dict[int, list[tuple[str, Path]]] = defaultdict(list)
    for role, paths in roles.items():
        for p in paths:
            try:
                by_size[p.stat().st_size].append((role, p))
            except OSError:
                continue  # unreadable: loading names it
    shared = []
    for group in by_size.values():
        if len({role for role, _ in group}) < 2:
            continue
        seen: dict[str, tuple[str, Path]] = {}
        for role, p in group:
            try:
                key = _digest(p)
            except OSError:
                continue
            if key in seen and seen[key][0] != role:
                shared.append((seen[key], (role, p)))
            seen.setdefault(key, (role, p))
    if shared:
        (r1, p1), (r2, p2) = shared[0]
        pairs = sorted({f"{a[0]} and {b[0]}" for a, b in shared})
        warnings.warn(f"{len(shared)} file(s) appear in two roles ({'; '.join(pairs)}), e.g. {p1} ({r1}) is "
                      f"{p2} ({r2}): the same image on both sides of a split makes results look better (or, "
                      "between normal and abnormal, worse) than they are; expected disjoint folders",
                      stacklevel=3)


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        warnings.warn(f"skipped {len(skipped)} bad file(s); first: {skipped[0]}", stacklevel=3)
