"""The `edgead` command line. Subcommands live in small modules and are imported lazily, so
`edgead --help` stays fast and the host never imports `export` unless asked to export."""

from __future__ import annotations

import importlib
import sys

import click

from firmware_sim.errors import UserError

# name -> (module, attribute): each module defines one click command or group.
_COMMANDS = {
    "data": ("edgead.cli_data", "data"),
    "info": ("edgead.cli_train", "info"),
    "train": ("edgead.cli_train", "train"),
    "eval": ("edgead.cli_train", "eval_cmd"),
    "demo": ("edgead.cli_demo", "demo"),
    "bench": ("edgead.cli_bench", "bench"),
    "export": ("edgead.cli_export", "export_cmd"),
    "device": ("edgead.cli_device", "device"),
    "report": ("edgead.cli_report", "report"),
    "analyze": ("edgead.cli_analyze", "analyze"),
}
_HELP = {
    "data": "Make, convert and inspect datasets (MVTec AD layout).",
    "info": "Parameters, bytes, MACs and peak memory of a detector.",
    "train": "Train a detector over one task or a stream of tasks.",
    "eval": "Recompute the metrics of a run from its checkpoints.",
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
def cli() -> None:
    """edgead: continual visual anomaly detection within a memory budget, for edge devices."""


def main(argv: list[str] | None = None) -> None:
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
    except OSError as e:  # a full disk, a read-only or missing folder: the path and the reason, no traceback
        from edgead.outputs import os_error_text

        click.echo(f"error: {os_error_text(e)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
