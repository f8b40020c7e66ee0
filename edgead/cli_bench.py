"""`edgead bench ...`: the measurement scripts under benchmarks/."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def bench() -> None:
    """Run benchmarks (results as JSON and Markdown)."""


@bench.command()
@click.option("--mvtec", required=True, type=click.Path(path_type=Path), help="MVTec AD root.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--rows", default=None, help="Comma-separated row keys (default: all).")
@click.option("--tasks", default=None, help="Comma-separated categories (default: the thesis order).")
@click.option("--epochs", default=20, show_default=True)
@click.option("--image-size", default=256, show_default=True)
@click.option("--memory-size", default=100, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--weights-dir", default=None, help="Folder with the backbones' ImageNet weight files.")
def thesis(mvtec, out, rows, tasks, epochs, image_size, memory_size, seed, weights_dir):
    """The thesis table's rows over the ten MVTec AD objects, in the thesis order."""
    from benchmarks.thesis import MVTEC_THESIS_ORDER, run_thesis, table_markdown

    table = run_thesis(mvtec, out, rows=tuple(rows.split(",")) if rows else None,
                       tasks=tuple(tasks.split(",")) if tasks else MVTEC_THESIS_ORDER, epochs=epochs,
                       image_size=image_size, memory_size=memory_size, seed=seed, weights_dir=weights_dir,
                       log=lambda m: click.echo(m, err=True))
    click.echo(table_markdown(table))
