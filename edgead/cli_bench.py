"""`edgead bench ...`: the measurement scripts under benchmarks/.

Each script is also runnable as `python benchmarks/bench_X.py`; `edgead bench NAME ARGS...` hands ARGS to
the script's own parser, so the options and `--help` are the script's, in one place.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

# command name -> (module under benchmarks/ with main(argv) -> int and a --quick mode, what it measures)
SCRIPTS = {
    "memory-budget": ("bench_memory_budget", "Quality and forgetting vs replay bytes, per codec; Pareto plot."),
    "speed": ("bench_speed", "Latency, peak RAM, size, MACs of every model x format; training time per epoch."),
    "scaling": ("bench_scaling", "Training time and memory per task as the number of tasks grows."),
    "peer": ("bench_peer", "anomalib's STFPM beside ours on the same split (builds its own venv)."),
    "cl-quality": ("bench_cl_quality", "Fine-tuning vs image replay vs compressed replay per codec."),
    "cl-speed": ("bench_cl_speed", "Time per epoch: compressed replay vs image replay vs fine-tuning."),
    "device": ("bench_device", "Device runtime: memory growth over 5,000 inferences, latency per format."),
    "metrics": ("bench_metrics", "Pixel metrics: time and memory against scikit-learn."),
    "single-task": ("bench_single_task", "PaSTe vs STFPM, ImageNet vs random teacher, one category."),
    "recipe": ("bench_recipe", "Training recipes and --resize modes on real categories: chosen on a dev half, "
               "reported on the other."),
}


class _BenchGroup(click.Group):
    """The scripts become subcommands lazily: `edgead bench --help` imports none of them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SCRIPTS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SCRIPTS:
            return super().get_command(ctx, name)
        module, what = SCRIPTS[name]

        @click.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                                    "help_option_names": []},
                       short_help=what, help=f"{what} Runs benchmarks/{module}.py: ARGS (try --help) "
                       "go to the script.")
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def run(args: tuple[str, ...]) -> None:
            main = importlib.import_module(f"benchmarks.{module}").main
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's --help and usage errors
                code = e.code
            if isinstance(code, str) or (isinstance(code, int) and code != 0):  # some mains return a dict
                raise SystemExit(code)

        return run


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Run benchmarks (results as JSON, CSV and PNG in benchmarks/results/)."""


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
