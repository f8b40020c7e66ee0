"""`edgead train`: one task or a stream of tasks, with a continual-learning strategy."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edgead.cl.config import ReplayConfig
from edgead.cli.options import dataclass_options, take_options
from edgead.cli.tables import print_table
from edgead.config_file import config_option
from edgead.engine.trainer import TrainConfig
from edgead.models.teacher_student import DetectorConfig


@click.command()
@config_option
@click.option("--data", default=None, type=click.Path(path_type=Path),
              help="Dataset root (MVTec layout) or a dataset .yaml naming image folders.")
@click.option("--normal", default=None, type=click.Path(path_type=Path), help="Folder of normal images (one task).")
@click.option("--abnormal", default=None, type=click.Path(path_type=Path), help="Folder of abnormal images.")
@click.option("--mask", default=None, type=click.Path(path_type=Path),
              help="Folder of masks for the abnormal images (<stem>.png or <stem>_mask.png).")
@click.option("--normal-test", default=None, type=click.Path(path_type=Path),
              help="Folder of good test images (default: a seeded 20%% of --normal).")
@click.option("--name", default=None, help="Name of the --normal/--abnormal task (default: the normal folder's "
              "name, or its parent's for good/, normal/, ok/).")
@click.option("--max-train", type=int, default=None, help="At most N normal training images per task (seeded).")
@click.option("--tasks", default=None, help="Comma-separated categories in order (default: all).")
@dataclass_options(DetectorConfig, TrainConfig, ReplayConfig)
@click.option("--weights", default=None, type=click.Path(path_type=Path), help="Backbone ImageNet weights file.")
@click.option("--resume", is_flag=True, help="Continue a killed run from its last completed task.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (and, with --resume, damaged replay "
              "records) with a warning instead of stopping.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Write into an --out folder that holds other files (never over a run).")
def train(data, normal, abnormal, mask, normal_test, name, max_train, tasks, weights, resume, skip_bad, out, force,
          **options):
    """Train over one task or a stream of tasks; writes checkpoints, OUT/results.json and OUT/config.yaml.

    The model, training and replay options are the fields of DetectorConfig, TrainConfig and ReplayConfig
    (edgead.options), the same keywords as `Detector(...)` / `Detector.fit(...)`.
    """
    from edgead import console
    from edgead.cl.run_folder import check_new_run_folder
    from edgead.cl.runner import run_stream
    from edgead.config_file import context_values, record_config
    from edgead.data.folder import stream_from_options
    from edgead.outputs import check_writable

    det = DetectorConfig.defaults(**take_options(DetectorConfig, options))
    cfg = TrainConfig(**take_options(TrainConfig, options))  # a bad value is an error before any data is read
    replay = ReplayConfig(**take_options(ReplayConfig, options))
    replay.check_detector(det.model)
    cfg.progress = cfg.progress and console.level() > console.QUIET
    if not resume:  # before this command writes its own files (dataset.yaml, config.yaml) into --out
        out = check_new_run_folder(out, force=force)  # resolved; the run's marker written
        check_writable(out, what="--out")
    stream = stream_from_options(data, tasks, normal=normal, abnormal=abnormal, mask=mask, normal_test=normal_test,
                                 max_train=max_train, out=out, name=name)
    if not (out / "state.json").exists():  # a new run (resuming keeps the recorded file as it is)
        record_config(out, context_values(click.get_current_context()))
    # force=True: the folder was checked above, and what it holds now beside the user's files is this run's.
    res = run_stream(stream, det, cfg, replay, out, weights=weights, resume=resume, skip_bad=skip_bad, force=True,
                     command="edgead " + shlex.join(sys.argv[1:]),
                     log=(lambda m: None) if console.level() <= console.QUIET else (lambda m: click.echo(m, err=True)))
    print_table(res)
