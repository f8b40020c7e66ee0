"""`edgead device run | buffer | profile`: the device CLI from the host, forwarding to firmware_sim.commands
(the same functions `python -m firmware_sim` calls)."""

from __future__ import annotations

import json

import click


def _echo(obj) -> None:
    click.echo(json.dumps(obj, default=str))


@click.group("device")
def device() -> None:
    """Run an exported model as the device does, manage its replay buffer, profile it."""


@device.command("run")
@click.option("--artifact", required=True, type=click.Path(), help="Artifact folder (edgead export --out).")
@click.option("--images", required=True, type=click.Path(), help="An image file or a folder of images.")
@click.option("--out", default=None, type=click.Path(), help="Folder for one anomaly-map overlay PNG per image.")
@click.option("--format", "fmt", default=None, help="tflite-int8 | onnx-int8 | onnx (default: the first exported).")
@click.option("--threads", type=int, default=None)
@click.option("--delegate", type=click.Choice(["edgetpu"]), default=None)
@click.option("--no-xnnpack", is_flag=True, help="TFLite: built-in kernels without XNNPACK.")
@click.option("--buffer", default=None, type=click.Path(), help="Replay buffer file for the int8 trunk latents.")
@click.option("--budget", default=None, help="Buffer budget, e.g. 256KB (needed to create a buffer file).")
@click.option("--task", type=int, default=None, help="Task id of these images (default: newest in the buffer).")
def run_cmd(artifact, images, out, fmt, threads, delegate, no_xnnpack, buffer, budget, task):
    """Score images: one JSON line per image (path, score, normalized score, decision, latency)."""
    from firmware_sim import commands

    summary = commands.run(artifact, images, out, threads, delegate, buffer, budget, task, fmt, emit=_echo,
                           warn=lambda m: click.echo(f"warning: {m}", err=True), xnnpack=not no_xnnpack)
    click.echo(json.dumps({"summary": summary}, default=str), err=True)


@device.group("buffer")
def buffer() -> None:
    """Inspect, export or import a replay buffer file."""


@buffer.command("stats")
@click.argument("file", type=click.Path())
def buffer_stats(file):
    """JSON: the buffer's records, bytes, tasks and load report (damaged records dropped)."""
    from firmware_sim import commands

    _echo(commands.buffer_stats(file))


@buffer.command("export")
@click.argument("file", type=click.Path())
@click.argument("dest", type=click.Path())
def buffer_export(file, dest):
    """Write a clean copy of FILE to DEST (damaged records dropped) for the host's --device-buffer."""
    from firmware_sim import commands

    _echo(commands.buffer_export(file, dest))


@buffer.command("import")
@click.argument("src", type=click.Path())
@click.argument("file", type=click.Path())
@click.option("--mode", type=click.Choice(["merge", "replace"]), default="merge", show_default=True)
@click.option("--budget", default=None)
def buffer_import(src, file, mode, budget):
    """Merge SRC's records into FILE within its budget, or replace FILE with SRC."""
    from firmware_sim import commands

    _echo(commands.buffer_import(src, file, mode, budget))


@device.command("profile")
@click.option("--artifact", required=True, type=click.Path())
@click.option("--profile", "profile_names", multiple=True, help="Profile name (repeatable; default: all).")
@click.option("--profiles", default=None, type=click.Path(), help="Extra profiles JSON file.")
@click.option("--budget", default=None, help="Replay buffer budget to count in flash, e.g. 2.46MB.")
@click.option("--runs", default=50, show_default=True)
@click.option("--warmup", default=5, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--format", "fmt", default=None)
@click.option("--delegate", type=click.Choice(["edgetpu"]), default=None)
@click.option("--no-xnnpack", is_flag=True, help="TFLite: built-in kernels without XNNPACK.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (otherwise a short text summary).")
def profile_cmd(artifact, profile_names, profiles, budget, runs, warmup, threads, fmt, delegate, no_xnnpack,
                as_json):
    """Latency (p50/p95/p99), RAM and flash, and whether model + buffer fit each device profile."""
    from firmware_sim import commands
    from firmware_sim.__main__ import _profile_text

    res = commands.profile(artifact, list(profile_names) or None, profiles, budget, runs, warmup, threads, fmt,
                           delegate, xnnpack=not no_xnnpack)
    _echo(res) if as_json else _profile_text(res)


@device.command("bundle", add_help_option=False, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bundle_cmd(args):
    """Folder + .tar.gz for a device: firmware_sim, the artifact, requirements-device.txt, README.
    Same arguments as `python -m firmware_sim bundle ART OUT [--format F] [--force]`."""
    _forward("bundle", args)


@device.command("edgetpu", add_help_option=False, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def edgetpu_cmd(args):
    """Compile ART's tflite-int8 graphs for the Coral Edge TPU (or record ones compiled by hand).
    Same arguments as `python -m firmware_sim edgetpu ART [--no-compile]`."""
    _forward("edgetpu", args)


def _forward(cmd: str, args) -> None:
    # New device commands live in firmware_sim's argparse parser only; this forwards to it.
    from firmware_sim.__main__ import main as fw_main

    rc = fw_main([cmd, *args])
    if rc:
        raise SystemExit(rc)
