"""ELPV (electroluminescence images of solar cells, Deitsch et al.) -> two categories `elpv_mono`, `elpv_poly`.

Source: the pip package `elpv-dataset` (SRC = `package`), or a folder with its `labels.csv` and `images/`
(the package's data folder or a clone of zae-bayern/elpv-dataset). labels.csv rows are
`images/<name>.png <defect probability> <mono|poly>`; probability 0 = normal, 1 = defective, 1/3 and 2/3
are the experts' uncertain votes. Labels are image-level only: no masks are written, dataset.json says
`"pixel_labels": false`, and the pipeline reports pixel metrics as n/a for these categories.

Normals of each cell type, in labels.csv order, are split with `split_normals` (seeded) into train/good
and test/good; defective cells go to test/defective. Uncertain cells are dropped by default;
`--uncertain as-defect` puts them in test/uncertain (their own defect type, so they can be told apart),
`--uncertain as-normal` adds them to the normals before the split.
"""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack
from pathlib import Path

from edgead.data.category_writer import CategoryWriter, command_line, split_normals
from edgead.errors import EdgeadError

PACKAGE = "package"
PIP_COMMAND = "pip install elpv-dataset==1.0.0.post1"
CELL_TYPES = ("mono", "poly")
UNCERTAIN = ("drop", "as-defect", "as-normal")
LICENSE = "CC BY-NC-SA 4.0 (the package's LICENSE.md); cite Deitsch et al. as the package asks"
SOURCE = "pip package elpv-dataset 1.0.0.post1 (github.com/zae-bayern/elpv-dataset)"


def package_data_dir() -> Path:
    """The data folder (labels.csv, images/) of the installed `elpv-dataset` package."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise EdgeadError(f"ELPV: the pip package elpv-dataset is not installed; run `{PIP_COMMAND}` "
                          "(or `pip install edgead[data]`), or pass a folder with labels.csv and images/")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_labels(data_dir: Path) -> list[tuple[Path, float, str]]:
    """(image path, defect probability, cell type) per row of `<data_dir>/labels.csv`."""
    path = data_dir / "labels.csv"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise EdgeadError(f"{path}: missing (expected ELPV's labels.csv beside images/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeadError(f"{path}: not readable ({e})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            name, prob, kind = parts
            prob = float(prob)
        except ValueError:
            raise EdgeadError(f"{path}:{n}: {line.strip()!r}; expected '<image> <probability> <mono|poly>'") from None
        if kind not in CELL_TYPES or not 0.0 <= prob <= 1.0:
            raise EdgeadError(f"{path}:{n}: type {kind!r}, probability {prob}; expected mono|poly and 0..1")
        image = data_dir / name
        if not image.is_file():
            raise EdgeadError(f"{path}:{n}: image {image} not found")
        rows.append((image, prob, kind))
    if not rows:
        raise EdgeadError(f"{path}: no rows")
    return rows


def convert_elpv(src: str | Path, out: str | Path, *, uncertain: str = "drop", seed: int = 0,
                 test_fraction: float = 0.2, overwrite: bool = False, skip_bad: bool = False) -> list[Path]:
    """Convert ELPV (SRC `package` = the installed pip package, or its data folder) into two categories.

    Returns:
        [<out>/elpv_mono, <out>/elpv_poly]
    """
    if uncertain not in UNCERTAIN:
        raise EdgeadError(f"--uncertain {uncertain!r}: expected one of {', '.join(UNCERTAIN)}")
    data_dir = package_data_dir() if str(src) == PACKAGE else Path(src)
    rows = read_labels(data_dir)
    out = Path(out)
    written = []
    with ExitStack() as stack:  # both categories checked (exists? --overwrite?) before either is written
        writers = {k: stack.enter_context(CategoryWriter(out, f"elpv_{k}", overwrite=overwrite, skip_bad=skip_bad))
                   for k in CELL_TYPES}
        for kind in CELL_TYPES:
            written.append(_write_category(writers[kind], kind, rows, src, data_dir, out, uncertain, seed,
                                           test_fraction, skip_bad))
    return written


def _write_category(w: CategoryWriter, kind: str, rows: list[tuple[Path, float, str]], src, data_dir: Path,
                    out: Path, uncertain: str, seed: int, test_fraction: float, skip_bad: bool) -> Path:
    normals, defects, left_out = [], [], 0
    for image, prob, k in rows:
        if k != kind:
            continue
        if prob == 0.0 or (uncertain == "as-normal" and prob < 1.0):
            normals.append(image)
        elif prob == 1.0:
            defects.append((image, "defective"))
        elif uncertain == "as-defect":
            defects.append((image, "uncertain"))
        else:
            left_out += 1
    train, test = split_normals(normals, seed, test_fraction)
    for split, items in (("train", train), ("test", test)):
        for p in items:
            w.add_image(p, split, "good")
    for p, defect in defects:
        w.add_image(p, "test", defect)
    return w.finish({
        "dataset": "elpv", "cell_type": kind, "source": SOURCE if str(src) == PACKAGE else str(data_dir),
        "license": LICENSE, "seed": seed, "test_fraction": test_fraction, "uncertain": uncertain,
        "split": "probability 0 = normal (seeded split), 1 = test/defective; image-level labels only",
        "ignored": {"uncertain_left_out": left_out},
        "command": command_line("elpv", src, out, seed=seed, test_fraction=test_fraction, uncertain=uncertain,
                                skip_bad=skip_bad),
    })
