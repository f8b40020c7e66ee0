"""`edgead bench NAME ARGS...`: the measurement scripts under benchmarks/.

Benchmarks are scripts in a checkout of the repository, not an installed package: this verb runs
`python benchmarks/NAME.py ARGS...` in a child process, so the options and `--help` are the script's own, in
one place, and nothing here imports them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from edgead.errors import EdgeadError

# command name -> (script under benchmarks/ with main(argv) -> int and a --quick mode, what it measures)
SCRIPTS = {
    "memory-budget": ("bench_memory_budget", "Quality and forgetting vs replay bytes, per codec; Pareto plot."),
    "speed": ("bench_speed", "Latency, peak RAM, size, MACs of every model x format; training time per epoch."),
    "scaling": ("bench_scaling", "Training time and memory per task as the number of tasks grows."),
    "peer": ("bench_peer", "anomalib's STFPM beside ours on the same split (builds its own venv)."),
    "real-stream": ("bench_real_stream", "The real product stream: every method x budget x seed, as one sweep "
                    "(--jobs N, --ray ADDRESS)."),
    "cl-quality": ("bench_cl_quality", "Fine-tuning vs image replay vs compressed replay per codec."),
    "cl-speed": ("bench_cl_speed", "Time per epoch: compressed replay vs image replay vs fine-tuning."),
    "device": ("bench_device", "Device runtime: memory growth over 5,000 inferences, latency per format."),
    "metrics": ("bench_metrics", "Pixel metrics: time and memory against scikit-learn."),
    "single-task": ("bench_single_task", "PaSTe vs STFPM, ImageNet vs random teacher, one category."),
    "recipe": ("bench_recipe", "Training recipes and --resize modes on real categories: chosen on a dev half, "
               "reported on the other."),
    "threshold": ("bench_threshold", "Deployment threshold rules on real categories: chosen on a dev half, "
                  "reported on the other."),
    "thesis": ("thesis", "The seed thesis's table over the ten MVTec AD objects (--mvtec PATH)."),
}


def benchmarks_dir() -> Path:
    """The checkout's benchmarks/ folder (edgead/cli/bench.py -> the repository root)."""
    return Path(__file__).resolve().parents[2] / "benchmarks"


def script_path(name: str) -> Path:
    path = benchmarks_dir() / f"{SCRIPTS[name][0]}.py"
    if not path.is_file():
        raise EdgeadError(f"edgead bench runs the scripts of a checkout of the repository; {path} is missing "
                          "(clone the repository and install it with ./setup.sh)")
    return path


class _BenchGroup(click.Group):
    """The scripts become subcommands lazily: `edgead bench --help` runs none of them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SCRIPTS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SCRIPTS:
            return None
        module, what = SCRIPTS[name]

        @click.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                                    "help_option_names": []},
                       short_help=what, help=f"{what} Runs benchmarks/{module}.py: ARGS (try --help) "
                       "go to the script; --config FILE.yaml gives them from a file (keys: the script's "
                       "long options), flags after it override.")
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def run(args: tuple[str, ...]) -> None:
            from edgead.config_file import split_config_arg

            argv = split_config_arg(list(args))  # --config FILE.yaml: its options first, so flags override
            code = subprocess.call([sys.executable, str(script_path(name)), *argv])
            if code:
                raise SystemExit(code)

        return run


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Run benchmarks (results as JSON, CSV and PNG in benchmarks/results/)."""
