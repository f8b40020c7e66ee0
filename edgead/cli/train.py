"""`edgead train`: one task or a stream of tasks, with a continual-learning strategy."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edgead.cl.config import STRATEGIES
from edgead.cli.options import detector_config, detector_options
from edgead.cli.tables import print_table
from edgead.config_file import config_option
from edgead.engine.thresholds import DEFAULT_THRESHOLD_RULE, ThresholdRule


@click.command()
@config_option
@click.option("--data", "root", default=None, type=click.Path(path_type=Path),
              help="Dataset root (MVTec layout) or a dataset .yaml naming image folders.")
@click.option("--normal", default=None, type=click.Path(path_type=Path), help="Folder of normal images (one task).")
@click.option("--abnormal", default=None, type=click.Path(path_type=Path), help="Folder of abnormal images.")
@click.option("--mask", default=None, type=click.Path(path_type=Path),
              help="Folder of masks for the abnormal images (<stem>.png or <stem>_mask.png).")
@click.option("--normal-test", default=None, type=click.Path(path_type=Path),
              help="Folder of good test images (default: a seeded 20%% of --normal).")
@click.option("--max-train", type=int, default=None, help="At most N normal training images per task (seeded).")
@click.option("--tasks", default=None, help="Comma-separated categories in order (default: all).")
@detector_options
@click.option("--strategy", type=click.Choice(STRATEGIES),
              default="finetune", show_default=True)
@click.option("--codec", default=None, help="Latent codec for compressed-replay: fp32, fp16, int8-tensor, "
              "int8-channel, int4-channel, pca[:VAR] (default fp32).")
@click.option("--budget", default=None, help="Replay memory in bytes: 2.46MB, 500kB, 1.5MiB, 100000B.")
@click.option("--memory-size", default=100, show_default=True, help="Replay samples when no --budget.")
@click.option("--policy", type=click.Choice(["random", "coverage"]), default="random", show_default=True)
@click.option("--latent-crop", default="auto", show_default=True,
              help="compressed-replay with --budget: auto keeps whole latents when one fits in every task's share, "
                   "else the largest square crop that does; none: whole only; N: crops of N latent cells.")
@click.option("--replay-ratio", default=0.5, show_default=True, help="Fraction of each batch replayed.")
@click.option("--epochs", default=20, show_default=True)
@click.option("--steps", type=int, default=None,
              help="Training budget in optimiser steps per task instead of --epochs (same for small and large "
                   "categories).")
@click.option("--resize", type=click.Choice(["squash", "pad", "tile"]), default="squash", show_default=True,
              help="Non-square images: squash to a square, pad (letterbox, padding left out of pixel metrics) "
                   "or tile (square tiles, score = max). Recorded in checkpoints and exports.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=0.4, show_default=True)
@click.option("--momentum", default=0.9, show_default=True)
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--select-every", default=1, show_default=True,
              help="Epochs between model-selection checks on held-out normals (0: keep the last epoch).")
@click.option("--val-fraction", default=0.1, show_default=True)
@click.option("--threshold-rule", default=DEFAULT_THRESHOLD_RULE, show_default=True,
              help="Deployment threshold from the held-out normals: quantile:Q, sigma:K (mean + K std) or "
                   "pseudo-f1 (best F1 against pseudo-defects). See docs/thresholds.md.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--weights", default=None, type=click.Path(path_type=Path), help="Backbone ImageNet weights file.")
@click.option("--no-pretrained", is_flag=True, help="Random teacher (experiments only).")
@click.option("--device-buffer", default=None, type=click.Path(path_type=Path),
              help="Start compressed replay from a buffer collected on a device.")
@click.option("--device-trunk", default=None, type=click.Path(path_type=Path),
              help="Keep latents as a device does: this PaSTe export's int8 TFLite trunk output (--codec int8-device).")
@click.option("--resume", is_flag=True, help="Continue a killed run from its last completed task.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (and, with --resume, damaged replay "
              "records) with a warning instead of stopping.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Write into an --out folder that holds other files (never over a run).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(root, normal, abnormal, mask, normal_test, max_train, tasks, model, backbone, levels, bootstrap, image_size,
          strategy, codec, budget, memory_size, policy, latent_crop, replay_ratio, epochs, steps, resize, batch_size, lr, momentum, weight_decay,
          select_every, val_fraction, threshold_rule, seed, device, weights, no_pretrained, device_buffer, device_trunk, resume,
          skip_bad, out, force, quiet):
    """Train over one task or a stream of tasks; writes checkpoints, OUT/results.json and OUT/config.yaml."""
    from edgead import console
    from edgead.cl.config import ReplayConfig
    from edgead.cl.run_folder import check_new_run_folder
    from edgead.cl.runner import run_stream
    from edgead.config_file import context_values, record_config
    from edgead.data.folder import stream_from_options
    from edgead.engine.trainer import TrainConfig
    from edgead.outputs import check_writable

    ThresholdRule.parse(threshold_rule)  # a bad rule is an error before any data is read
    det = detector_config(model, backbone, levels, bootstrap, image_size, pretrained=not no_pretrained)
    replay = ReplayConfig.from_options(strategy, codec, budget, memory_size, policy, device_buffer, device_trunk,
                                       latent_crop=latent_crop)
    replay.check_detector(det.model)
    if not resume:  # before this command writes its own files (dataset.yaml, config.yaml) into --out
        out = check_new_run_folder(out, force=force)  # resolved; the run's marker written
        check_writable(out, what="--out")
    stream = stream_from_options(root, tasks, normal=normal, abnormal=abnormal, mask=mask, normal_test=normal_test,
                                 max_train=max_train, out=out)
    if not (out / "state.json").exists():  # a new run (resuming keeps the recorded file as it is)
        record_config(out, context_values(click.get_current_context()))
    cfg = TrainConfig(epochs=epochs, steps=steps, resize=resize, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                      seed=seed, device=device, replay_ratio=replay_ratio, select_every=select_every,
                      val_fraction=val_fraction, threshold_rule=threshold_rule, progress=not quiet and console.level() > console.QUIET)
    # force=True: the folder was checked above, and what it holds now beside the user's files is this run's.
    res = run_stream(stream, det, cfg, replay, out, weights=weights, resume=resume, skip_bad=skip_bad, force=True,
                     command="edgead " + shlex.join(sys.argv[1:]),
                     log=(lambda m: None) if console.level() <= console.QUIET else (lambda m: click.echo(m, err=True)))
    print_table(res)
