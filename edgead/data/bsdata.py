"""BSData (ball screw drive surfaces, 2Obe/BSData) -> MVTec AD layout, one category `bsdata`.

Source layout: data/<name>.jpg, label/<name>.json (labelme polygons of "Pitting", only for images that show
pitting) and image_data.json (per image: type 1 or 2). An image with a label file is defective: it goes to
test/pitting with the rasterised union of its shapes as mask; an image without one is normal and the
normals, sorted by name, are split with `split_normals` (seeded) into train/good and test/good.

Only type 2 images are used. Type 2 is the fixed camera set-up: two resolutions of the same view (565x230
and 770x322 after the halving in our copy), and it holds every normal image. Type 1 (69 images, 55 sizes,
a wider and differently lit crop) shows pitting in every image and has no normals: kept in the same
category, a detector would learn "type 1 looks different" rather than "pitting", and its test images would
be judged against normals of another look. They are left out and counted in dataset.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgead.data.category_writer import CategoryWriter, command_line, split_normals
from edgead.data.labelme import rasterise, read_labelme
from edgead.errors import EdgeadError

USED_TYPE = 2
DEFECT = "pitting"
LICENSE = "CC BY-SA 4.0 (the repository's LICENSE)"
SOURCE = ("github.com/2Obe/BSData (commit 7204b28a), images and labelme files halved in width and height; "
          "paper arXiv 2103.13003")


def _image_types(src: Path) -> dict[str, int]:
    path = src / "image_data.json"
    try:
        doc = json.loads(path.read_text())
        return {e["filename"]: int(e["type"]) for e in doc["images"]}
    except FileNotFoundError:
        raise EdgeadError(f"{path}: missing (expected BSData's image_data.json beside data/ and label/)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError,
            RecursionError) as e:
        raise EdgeadError(f"{path}: not BSData's image list (expected images[].filename and .type; "
                          f"{type(e).__name__}: {str(e)[:200]})") from None


def convert_bsdata(src: str | Path, out: str | Path, *, seed: int = 0, test_fraction: float = 0.2,
                   category: str = "bsdata", overwrite: bool = False, skip_bad: bool = False) -> list[Path]:
    """Convert a BSData folder (data/, label/, image_data.json) into `<out>/<category>`.

    Returns:
        [the category folder written]
    """
    src, out = Path(src), Path(out)
    data, labels = src / "data", src / "label"
    for folder in (data, labels):
        if not folder.is_dir():
            raise EdgeadError(f"{folder}: missing (expected BSData layout: data/*.jpg, label/*.json, "
                              "image_data.json)")
    types = _image_types(src)
    images = sorted(p for p in data.iterdir() if p.is_file() and p.suffix.lower() == ".jpg")
    if not images:
        raise EdgeadError(f"{data}: no .jpg images")
    label_stems = {p.stem for p in labels.glob("*.json")}
    unmatched = sorted(label_stems - {p.stem for p in images})
    if unmatched:
        raise EdgeadError(f"{labels / (unmatched[0] + '.json')}: no image {unmatched[0]}.jpg in {data}")
    normals, defects, excluded = [], [], {}
    for p in images:
        if p.name not in types:
            raise EdgeadError(f"{p}: not listed in {src / 'image_data.json'} (its type is unknown)")
        if types[p.name] != USED_TYPE:
            key = f"type_{types[p.name]}_{'defective' if p.stem in label_stems else 'normal'}"
            excluded[key] = excluded.get(key, 0) + 1
            continue
        (defects if p.stem in label_stems else normals).append(p)
    train, test = split_normals(normals, seed, test_fraction)
    with CategoryWriter(out, category, overwrite=overwrite, skip_bad=skip_bad) as w:
        for split, items in (("train", train), ("test", test)):
            for p in items:
                w.add_image(p, split, "good")
        for p in defects:
            label = labels / f"{p.stem}.json"
            size = w.check_image(p)
            if size is None:
                continue  # a bad image skipped (skip_bad)
            mask = rasterise(label, read_labelme(label), size)
            if not mask.any():
                raise EdgeadError(f"{label}: its shapes cover no pixel of {p.name}")
            if w.add_image(p, "test", DEFECT) is not None:  # None: the same bytes as a training image
                w.add_mask(mask, DEFECT, p.stem)
        return [w.finish({
            "dataset": "bsdata", "source": SOURCE, "license": LICENSE, "seed": seed,
            "test_fraction": test_fraction,
            "split": f"type {USED_TYPE} only; normals (no label file) sorted by name, seeded split; "
                     "labelled images -> test/pitting",
            "ignored": {"excluded_image_types": excluded},
            "command": command_line("bsdata", src, out, seed=seed, test_fraction=test_fraction, skip_bad=skip_bad),
        })]
