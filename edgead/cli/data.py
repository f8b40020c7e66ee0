"""`edgead data ...`: synthetic data, conversion of public datasets, and a look at a dataset."""

from __future__ import annotations

from pathlib import Path

import click

from edgead.data.converters import CONVERTERS
from edgead.errors import EdgeadError


@click.group()
def data() -> None:
    """Make, convert and inspect datasets in MVTec AD layout."""


@data.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--categories", default=None, help="Comma-separated names (default: brick,grass,nut,pill).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--image-size", default=128, show_default=True, type=int)
@click.option("--train", "n_train", default=24, show_default=True, type=int, help="Normal training images.")
@click.option("--test", "n_test", default=12, show_default=True, type=int, help="Good test images (defects added).")
@click.option("--overwrite", is_flag=True, help="Replace existing category folders.")
def synth(out: Path, categories: str | None, seed: int, image_size: int, n_train: int, n_test: int,
          overwrite: bool) -> None:
    """Generate a synthetic MVTec-like dataset into OUT (deterministic for a seed)."""
    from edgead.data.synth import DEFAULT_CATEGORIES, generate_dataset

    cats = tuple(c.strip() for c in categories.split(",") if c.strip()) if categories else DEFAULT_CATEGORIES
    generate_dataset(out, cats, seed=seed, image_size=image_size, n_train=n_train, n_test=n_test,
                     overwrite=overwrite)
    click.echo(f"wrote {len(cats)} categories to {out}: {', '.join(cats)}")


@data.command()
@click.argument("dataset", type=click.Choice(list(CONVERTERS)))
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the train/test-good split.")
@click.option("--test-fraction", default=None, type=float,
              help="Share of the normals that go to test/good (default: the converter's, 0.2; mpdd 1/3).")
@click.option("--variant", default=None, type=click.Choice(["original", "denoised"]),
              help="battery-weld: the published zip (original, default) or the authors' denoised copy.")
@click.option("--uncertain", default=None, type=click.Choice(["drop", "as-defect", "as-normal"]),
              help="elpv: cells with a defect probability strictly between 0 and 1 (default: drop).")
@click.option("--overwrite", is_flag=True)
@click.option("--skip-bad", is_flag=True,
              help="Leave unreadable images out (counted in dataset.json) instead of stopping at the first.")
def convert(dataset: str, src: Path, out: Path, seed: int, test_fraction: float | None, variant: str | None,
            uncertain: str | None, overwrite: bool, skip_bad: bool) -> None:
    """Convert a public dataset at SRC into MVTec AD layout under OUT (elpv: SRC `package` = the pip package)."""
    import json

    from edgead.data.converters import convert as run_converter

    for final in run_converter(dataset, src, out, seed=seed, overwrite=overwrite, skip_bad=skip_bad,
                               test_fraction=test_fraction, variant=variant, uncertain=uncertain):
        counts = json.loads((final / "dataset.json").read_text())["counts"]
        click.echo(f"wrote {final}: train {counts['train']}, test {counts['test']}")


@data.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None, help="Comma-separated (default: all under ROOT).")
@click.option("--out", "png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a montage PNG of normal and defective images with masks, labelled.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable or non-image files with a warning.")
def show(root: Path, categories: str | None, png: Path | None, skip_bad: bool) -> None:
    """Summarise a dataset (MVTec layout or a dataset .yaml): images per split and defect type."""
    from edgead.data.folder import open_stream

    cats = [c.strip() for c in categories.split(",")] if categories else None
    stream = open_stream(root, cats)
    rows = []
    for task in stream:
        idx = task.index_files(skip_bad=skip_bad)
        kinds: dict[str, int] = {}
        for e in idx.test:
            kinds[e.defect_type] = kinds.get(e.defect_type, 0) + 1
        rows.append((task.name, len(idx.train), kinds))
        defects = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        click.echo(f"{task.name:<14} train {len(idx.train):>4}   test: {defects}")
    if png is not None:
        from edgead.data.montage import save_montage

        save_montage(stream, png)
        click.echo(f"montage: {png}")
    if not rows:
        raise EdgeadError(f"{root}: no categories")
