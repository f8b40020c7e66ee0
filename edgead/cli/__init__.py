"""The `edgead` command line. Subcommands live in small modules and are imported lazily, so
`edgead --help` stays fast and the host never imports `export` unless asked to export."""

from __future__ import annotations

import importlib
import sys

import click

from firmware_sim.errors import UserError

# Top-level modules that only the `host` extra installs (pyproject.toml): a command that needs one of them
# tells the user to install the extra instead of printing a traceback.
HOST_MODULES = frozenset({"torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "tensorflow", "keras",
                          "ai_edge_litert", "tqdm", "yaml", "matplotlib", "sklearn", "scipy", "skimage",
                          "threadpoolctl", "openvino", "nncf"})

# name -> (module, attribute): each module defines one click command or group.
_COMMANDS = {
    "data": ("edgead.cli.data", "data"),
    "info": ("edgead.cli.info", "info"),
    "train": ("edgead.cli.train", "train"),
    "learn": ("edgead.cli.learn", "learn"),
    "eval": ("edgead.cli.eval", "eval_cmd"),
    "predict": ("edgead.cli.predict", "predict"),
    "calibrate": ("edgead.cli.calibrate", "calibrate"),
    "demo": ("edgead.cli.demo", "demo"),
    "bench": ("edgead.cli.bench", "bench"),
    "export": ("edgead.cli.export", "export_cmd"),
    "device": ("edgead.cli.device", "device"),
    "report": ("edgead.cli.report", "report"),
    "analyze": ("edgead.cli.analyze", "analyze"),
}
_HELP = {
    "data": "Make, convert and inspect datasets (MVTec AD layout).",
    "info": "Parameters, bytes, MACs and peak memory of a detector.",
    "train": "Train a detector over one task or a stream of tasks.",
    "learn": "Add products to a trained run: new images, or what a device kept (--device-buffer).",
    "eval": "Recompute the metrics of a run from its checkpoints (table; RUN/eval.json).",
    "predict": "Score images with a run's checkpoint: JSON lines and overlays, as `device run`.",
    "calibrate": "Set a product's threshold from a few labelled good and defective images.",
    "bench": "Benchmarks: the thesis protocol and more (see benchmarks/).",
    "export": "Export a run for devices: int8 TFLite / ONNX, manifest.json, fidelity.json.",
    "device": "Run artifacts as a device would; replay buffer; latency/RAM/flash profile.",
    "report": "Markdown report of runs: curves, m[i][j], memory, anomaly maps, results table.",
    "demo": "End to end on built-in synthetic data: generate, train PaSTe-MCUNet, evaluate.",
    "analyze": "Feature analysis: PCA channel importance, t-SNE, feature-selective fine-tuning.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr = _COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, _HELP[n]) for n in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgead")
@click.option("-v", "--verbose", is_flag=True, help="Show library INFO lines (TensorFlow, absl) and all warnings.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; warnings and errors only.")
def cli(verbose: bool, quiet: bool) -> None:
    """edgead: continual visual anomaly detection within a memory budget, for edge devices."""
    from edgead import console

    if verbose and quiet:
        raise click.UsageError("-v and -q contradict each other: give one")
    console.configure(console.VERBOSE if verbose else console.QUIET if quiet else console.NORMAL)


def main(argv: list[str] | None = None) -> None:
    from edgead import console

    console.configure(console.NORMAL)  # before any subcommand module (and TensorFlow) is imported
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as e:  # `pip install .` gives the device part only: say what the host needs
        top = (e.name or "").split(".")[0]
        if top not in HOST_MODULES:
            raise
        click.echo(f"error: this command needs the host packages (missing: {top}). Install them with "
                   "pip install 'edgead[host]' (or run ./setup.sh in a checkout, which installs everything).",
                   err=True)
        sys.exit(2)
    except OSError as e:  # a full disk, a read-only or missing folder: the path and the reason, no traceback
        from edgead.outputs import os_error_text

        click.echo(f"error: {os_error_text(e)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
