"""Battery weld seams (LaoGeZi6666/Battery-Weld-Anomaly-Detection-Dataset) -> MVTec AD layout.

Read straight from the published zip, as is: `Battery Weld Anomaly Detection Dataset.zip` holds
`welding/{train/good, test/good, test/defective, ground_truth/defective}` (the authors' split, kept);
`--variant denoised` reads `welding-denoised.zip` (the authors' cropped and cleaned copy, the same folders
at the top of the zip). Masks are named like their image; a mask that matches no test image is ignored
and counted in dataset.json (`ignored.orphan_masks`); a defective image without a mask is an error.
Masks are binarised at > 127 into `ground_truth/defective/<stem>_mask.png`; images are copied byte for byte.
The split is the authors' own, so the seed changes nothing here (it is recorded all the same).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath

from edgead.data.category_writer import CategoryWriter, command_line, image_size
from edgead.errors import EdgeadError
from firmware_sim.preprocess import is_image_file

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


def _extract(zf: zipfile.ZipFile, member: str, folder: Path) -> Path:
    dst = folder / PurePosixPath(member).name  # flat: member names never choose where we write
    with zf.open(member) as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g)
    return dst


def convert_battery_weld(src: str | Path, out: str | Path, *, variant: str = "original", seed: int = 0,
                         overwrite: bool = False) -> list[Path]:
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
    with zf, CategoryWriter(out, CATEGORIES[variant], overwrite=overwrite) as w:
        names = zf.namelist()
        root = _root_in_zip(names, zip_path)
        scratch = w.scratch()
        for split in ("train", "test"):
            for member in _members(names, f"{root}{split}/good/").values():
                w.add_image(_extract(zf, member, scratch), split, "good")
        masks = _members(names, f"{root}ground_truth/defective/")
        by_stem = {Path(n).stem.removesuffix("_mask"): n for n in masks}
        used = set()
        for name, member in _members(names, f"{root}test/defective/").items():
            stem = Path(name).stem
            shown = f"{zip_path}:{member}"
            if stem not in by_stem:
                raise EdgeadError(f"{shown}: no mask {root}ground_truth/defective/{name} in the zip")
            img = w.add_image(_extract(zf, member, scratch), "test", "defective")
            mask_name = by_stem[stem]
            used.add(mask_name)
            mask_member = masks[mask_name]
            w.add_mask_file(_extract(zf, mask_member, scratch), image_size(img, shown), "defective", stem,
                            shown=f"{zip_path}:{mask_member}")
        orphans = sorted(set(masks) - used)
        return [w.finish({
            "dataset": "battery-weld", "variant": variant, "source": f"{SOURCE}: {zip_path.name}",
            "license": LICENSE, "seed": seed, "split": "the authors' train/test split, unchanged",
            "ignored": {"orphan_masks": len(orphans), "orphan_mask_examples": orphans[:5]},
            "command": command_line("battery-weld", src, out, seed=seed, variant=variant),
        })]
