"""`edgead report RUN_DIR [RUN_DIR ...] --out DIR`: figures, the thesis-style table and report.json."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", default=Path("report"), show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for report.md, report.json and the PNG figures.")
def report(run_dirs: tuple[Path, ...], out: Path) -> None:
    """Turn one or more runs (same task stream) into OUT/report.md with figures and a results table."""
    from edgead.report import make_report  # lazy: matplotlib and torch load only when a report is made

    make_report(list(run_dirs), out, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {out / 'report.md'}")
