"""Battery weld seams (LaoGeZi6666/Battery-Weld-Anomaly-Detection-Dataset) -> MVTec AD layout.

Read straight from the published zip, as is: `Battery Weld Anomaly Detection Dataset.zip` holds
`welding/{train/good, test/good, test/defective, ground_truth/defective}` (the authors' split, kept);
`--variant denoised` reads `welding-denoised.zip` (the authors' cropped and cleaned copy, the same folders
at the top of the zip). Masks are named like their image; a mask that matches no test image is ignored
and counted in dataset.json (`ignored.orphan_masks`); a defective image without a mask is an error.
Masks are binarised at > 127 into `ground_truth/defective/<stem>_mask.png`; images are copied byte for byte.
The split is the authors' own, so the seed changes nothing here (it is recorded all the same).

A zip is read as untrusted input: members are extracted flat (their names never choose where we write), a
member whose declared size is over `MAX_MEMBER_BYTES` is refused before a byte of it is extracted (a small
zip can declare gigabytes of zeros), the zip's whole declared content must fit in the free space, and every
image is decode-checked before it is counted (see `edgead.data.category_writer`).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath

from edgead.data.category_writer import CategoryWriter, command_line
from edgead.errors import EdgeadError
from firmware_sim.preprocess import is_image_file
from firmware_sim.sizes import format_size

# The largest image file taken from a zip: the published images are under 1 MB each; 64 MiB holds any
# image PIL will decode (its 89-megapixel limit) as PNG or JPEG, and keeps a bomb from filling the disk.
MAX_MEMBER_BYTES = 64 * 1024 * 1024

VARIANTS = {"original": "Battery Weld Anomaly Detection Dataset.zip", "denoised": "welding-denoised.zip"}
CATEGORIES = {"original": "battery_weld", "denoised": "battery_weld_denoised"}
LICENSE = ("Apache-2.0 (the repository's LICENSE file); its README badge says CC BY-SA 4.0; "
           "cite MVTec AD and the dataset as its README asks")
SOURCE = "github.com/LaoGeZi6666/Battery-Weld-Anomaly-Detection-Dataset (commit 2e768a6c)"
FOLDERS = ("train/good/", "test/good/", "test/defective/", "ground_truth/defective/")


def _zip_path(src: Path, variant: str) -> Path:
    if variant not in VARIANTS:
        raise EdgeadError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    if src.is_file():
        return src
    path = src / VARIANTS[variant]
    if not path.is_file():
        raise EdgeadError(f"{src}: no {VARIANTS[variant]!r} in it (expected the battery-weld folder or the zip)")
    return path


def _root_in_zip(names: list[str], zip_path: Path) -> str:
    """The prefix ('welding/' or '') under which the MVTec folders lie; exactly one must exist."""
    roots = sorted({r for n in names if "train/good/" in n
                    for r in [n.rsplit("train/good/", 1)[0]] if r == "" or r.endswith("/")})
    if len(roots) != 1:
        raise EdgeadError(f"{zip_path}: expected one folder with train/good, test/good, test/defective and "
                          f"ground_truth/defective inside the zip (found {len(roots)}: {roots[:3]})")
    root = roots[0]
    for folder in FOLDERS:
        if not any(n.startswith(root + folder) for n in names):
            raise EdgeadError(f"{zip_path}: no {root + folder} inside the zip (expected MVTec layout)")
    return root


def _members(names: list[str], prefix: str) -> dict[str, str]:
    """Image files directly inside `prefix` of the zip: {file name: member name}."""
    out = {}
    for n in sorted(names):
        rest = n[len(prefix):]
        if n.startswith(prefix) and rest and "/" not in rest and is_image_file(rest):
            out[rest] = n
    return out


def _check_space(zf: zipfile.ZipFile, members: list[str], zip_path: Path, out: Path) -> None:
    """The declared sizes of the members to extract, twice (scratch copy + category), must fit on disk."""
    need = 2 * sum(min(zf.getinfo(m).file_size, MAX_MEMBER_BYTES) for m in members)
    free = shutil.disk_usage(out).free
    if need > free:
        raise EdgeadError(f"{zip_path}: its images need {format_size(need)} while unpacked, {out} has "
                          f"{format_size(free)} free; expected enough free space")


def _extract(w: CategoryWriter, zf: zipfile.ZipFile, member: str, folder: Path, shown: str) -> Path | None:
    """Extract one member flat into `folder`; None when it is refused and skip_bad is set."""
    size = zf.getinfo(member).file_size
    if size > MAX_MEMBER_BYTES:  # before extracting: the declared size bounds what zipfile will inflate
        w.reject(f"{shown}: declares {format_size(size)} unpacked, over the {format_size(MAX_MEMBER_BYTES)} "
                 "limit for one image; expected an image file")
        return None
    dst = folder / PurePosixPath(member).name  # flat: member names never choose where we write
    try:
        with zf.open(member) as f, open(dst, "wb") as g:
            shutil.copyfileobj(f, g)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError) as e:
        dst.unlink(missing_ok=True)
        w.reject(f"{shown}: cannot be extracted ({e})")
        return None
    return dst


def convert_battery_weld(src: str | Path, out: str | Path, *, variant: str = "original", seed: int = 0,
                         overwrite: bool = False, skip_bad: bool = False) -> list[Path]:
    """Convert the battery-weld zip (SRC: the folder holding it, or the zip itself).

    Returns:
        [the category folder written: <out>/battery_weld or <out>/battery_weld_denoised]
    """
    src, out = Path(src), Path(out)
    zip_path = _zip_path(src, variant)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise EdgeadError(f"{zip_path}: not a readable zip file ({e})") from None
    with zf, CategoryWriter(out, CATEGORIES[variant], overwrite=overwrite, skip_bad=skip_bad) as w:
        names = zf.namelist()
        root = _root_in_zip(names, zip_path)
        goods = {split: _members(names, f"{root}{split}/good/") for split in ("train", "test")}
        masks = _members(names, f"{root}ground_truth/defective/")
        defects = _members(names, f"{root}test/defective/")
        _check_space(zf, [*goods["train"].values(), *goods["test"].values(), *masks.values(),
                          *defects.values()], zip_path, out)
        scratch = w.scratch()
        # One scratch folder per source folder: an image and its mask share a file name.
        folders = {k: scratch / k for k in ("train_good", "test_good", "defective", "masks")}
        for folder in folders.values():
            folder.mkdir()
        for split in ("train", "test"):
            for member in goods[split].values():
                shown = f"{zip_path}:{member}"
                if (path := _extract(w, zf, member, folders[f"{split}_good"], shown)) is not None:
                    w.add_image(path, split, "good", shown=shown)
        by_stem = {Path(n).stem.removesuffix("_mask"): n for n in masks}
        used = set()
        for name, member in defects.items():
            stem = Path(name).stem
            shown = f"{zip_path}:{member}"
            if stem not in by_stem:
                raise EdgeadError(f"{shown}: no mask {root}ground_truth/defective/{name} in the zip")
            mask_name = by_stem[stem]
            used.add(mask_name)
            img = _extract(w, zf, member, folders["defective"], shown)
            size = None if img is None else w.check_image(img, shown)
            if size is None:
                continue  # skipped (skip_bad): its mask goes with it
            mask_shown = f"{zip_path}:{masks[mask_name]}"
            mask_file = _extract(w, zf, masks[mask_name], folders["masks"], mask_shown)
            mask = None if mask_file is None else w.read_mask_file(mask_file, size, mask_shown)
            if mask is not None and w.add_image(img, "test", "defective", shown=shown) is not None:
                w.add_mask(mask, "defective", stem)
        orphans = sorted(set(masks) - used)
        return [w.finish({
            "dataset": "battery-weld", "variant": variant, "source": f"{SOURCE}: {zip_path.name}",
            "license": LICENSE, "seed": seed, "split": "the authors' train/test split, unchanged",
            "ignored": {"orphan_masks": len(orphans), "orphan_mask_examples": orphans[:5]},
            "command": command_line("battery-weld", src, out, seed=seed, variant=variant,
                                    skip_bad=skip_bad),
        })]
