"""`edgead learn`: add products to a trained run, from new images or from what a device kept."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edgead.cli.tables import print_table


@click.command()
@click.option("--run", "run", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The run folder to continue (the --out of `edgead train`).")
@click.option("--data", default=None, type=click.Path(path_type=Path),
              help="Dataset root (MVTec layout) or a dataset .yaml holding the new products.")
@click.option("--tasks", default=None, help="Comma-separated new categories, in order.")
@click.option("--normal", default=None, type=click.Path(path_type=Path), help="Folder of normal images (one task).")
@click.option("--abnormal", default=None, type=click.Path(path_type=Path), help="Folder of abnormal images.")
@click.option("--mask", default=None, type=click.Path(path_type=Path), help="Folder of masks for --abnormal.")
@click.option("--normal-test", default=None, type=click.Path(path_type=Path),
              help="Folder of good test images (default: a seeded 20% of --normal).")
@click.option("--name", default=None, help="Name of the --normal/--abnormal product (default: its folder's).")
@click.option("--max-train", type=int, default=None, help="At most N normal training images per new task (default: the run's --max-train).")
@click.option("--epochs", type=int, default=None, help="Epochs per new task (default: the run's).")
@click.option("--steps", type=int, default=None, help="Optimiser steps per new task instead of epochs.")
@click.option("--budget", default=None, help="A larger replay budget from now on (never smaller): 500kB, 2.46MB.")
@click.option("--device", default=None, help="Torch device (default: the run's).")
@click.option("--device-buffer", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Merge what a device kept (a replay buffer file) into the run's memory: a product the run "
                   "knows joins its task, a new one becomes a new task.")
@click.option("--model", default=None, help="Fixed by the run: refused unless it is the run's own.")
@click.option("--backbone", default=None, help="Fixed by the run: refused unless it is the run's own.")
@click.option("--image-size", type=int, default=None, help="Fixed by the run: refused unless it is the run's own.")
@click.option("--codec", default=None, help="Fixed by the run: refused unless it is the run's own.")
@click.option("--strategy", default=None, help="Fixed by the run: refused unless it is the run's own.")
@click.option("--resume", is_flag=True, help="Finish the tasks of a `learn` that was killed.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images with a warning instead of stopping.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def learn(run, data, tasks, normal, abnormal, mask, normal_test, name, max_train, epochs, steps, budget, device,
          device_buffer, model, backbone, image_size, codec, strategy, resume, skip_bad, quiet):
    """Continue RUN with new products: from its last checkpoint, replay memory and per-task thresholds, the new
    tasks appended (results.json grows by a row and a column each; every earlier checkpoint stays)."""
    from edgead import console
    from edgead.cl.runner import learn_run
    from edgead.cl.sources import learning_stream
    from firmware_sim.sizes import parse_size

    log = (lambda m: None) if quiet or console.level() <= console.QUIET else (lambda m: click.echo(m, err=True))
    command = "edgead " + shlex.join(sys.argv[1:])
    budget_bytes = None if budget is None else parse_size(budget)
    if device_buffer is not None:
        from edgead.cl.device_merge import merge_device_buffer

        if any(v is not None for v in (data, normal, tasks)):
            raise click.UsageError("--device-buffer merges a device's buffer on its own: add images with a "
                                   "separate `edgead learn --data/--normal` call")
        print_table(merge_device_buffer(run, device_buffer, budget_bytes=budget_bytes, command=command, log=log))
        return
    stream, prepare = None, None
    if not resume:
        if name is not None and normal is None:
            raise click.UsageError("--name names a --normal/--abnormal product; --data products keep their folder names")
        stream, prepare = learning_stream(run, data, tasks, normal=normal, abnormal=abnormal, mask=mask,
                                          normal_test=normal_test, name=name, max_train=max_train)
    fixed = {"model": model, "backbone": backbone, "image_size": image_size, "codec": codec, "strategy": strategy}
    res = learn_run(run, stream, epochs=epochs, steps=steps, budget_bytes=budget_bytes, device=device,
                    resume=resume, skip_bad=skip_bad, command=command, log=log, prepare=prepare, fixed=fixed)
    print_table(res)
