"""`edgead predict`: score images with a run's torch checkpoint, as `edgead device run` does with an export."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("predict")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder (edgead train --out).")
@click.option("--images", required=True, type=click.Path(path_type=Path), help="An image file or a folder of images.")
@click.option("--task", default=None, help="Decide with this product's own threshold (a task name; default: the "
              "task-agnostic threshold, the max over the tasks'), as `edgead device run --task NAME`.")
@click.option("--checkpoint", default=None, help="The checkpoint after this task, by name or index (default: the "
              "last).")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for one anomaly-map overlay PNG per image.")
@click.option("--map-frame", type=click.Choice(["image", "model"]), default="image", show_default=True,
              help="Overlays at the input image's size, or in the model's square frame.")
@click.option("--device", default="cpu", show_default=True, help="torch device.")
def predict(run_dir, images, task, checkpoint, out, map_frame, device):
    """Score images on the host: one JSON line per image (path, score, normalized score, decision, latency),
    the same lines and overlays as `edgead device run`, without exporting first."""
    from edgead.predict import predict_run

    summary = predict_run(run_dir, images, task, out, emit=lambda d: click.echo(json.dumps(d, default=str)),
                          warn=lambda m: click.echo(f"warning: {m}", err=True), device=device,
                          checkpoint=checkpoint, map_frame=map_frame)
    click.echo(json.dumps({"summary": summary}, default=str), err=True)
