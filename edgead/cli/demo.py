"""`edgead demo`: the main job end to end on built-in synthetic data, in a few minutes on a laptop CPU."""

from __future__ import annotations

import shlex
import sys
import warnings
from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True)
@click.option("--category", default="nut", show_default=True, help="Synthetic category to learn.")
# 8 epochs of 5 steps (batch 8) train as well as 15 epochs of 2 steps (batch 32) on the 32 training images, in
# half the time; 8 held-out normals (val 0.2) set a steadier threshold than 4.
@click.option("--epochs", default=8, show_default=True)
@click.option("--image-size", default=224, show_default=True, help="The paper's configuration (PaSTe-MCUNet-in3 "
              "at 224 px).")
@click.option("--weights", default=None, type=click.Path(path_type=Path),
              help="MCUNet-in3 ImageNet weights file or folder (else $EDGEAD_WEIGHTS_DIR, cache, download).")
@click.option("--seed", default=0, show_default=True)
def demo(out: Path, category: str, epochs: int, image_size: int, weights: Path | None, seed: int) -> None:
    """Generate synthetic data, train PaSTe-MCUNet on one category, evaluate and print the metrics."""
    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.cli.tables import print_table
    from edgead.data import TaskStream
    from edgead.data.synth import generate_dataset
    from edgead.engine.trainer import BudgetWarning, TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    data_dir, run_dir = out / "data", out / "run"
    if not (data_dir / category).is_dir():
        click.echo(f"generating synthetic data in {data_dir} ...", err=True)
        generate_dataset(data_dir, (category,), seed=seed, image_size=image_size, n_train=40, n_test=12)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # the demo always trains afresh
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=image_size)
    cfg = TrainConfig(epochs=epochs, seed=seed, batch_size=8, val_fraction=0.2)
    with warnings.catch_warnings():
        # The demo trains a few explicit epochs on purpose (minutes, not the budget floor's 1000 steps).
        warnings.simplefilter("ignore", BudgetWarning)
        res = run_stream(TaskStream(data_dir, [category]), det, cfg, ReplayConfig(), run_dir, weights=weights,
                         command="edgead " + shlex.join(sys.argv[1:]), log=lambda m: click.echo(m, err=True))
    click.echo(f"\nPaSTe-MCUNet on synthetic '{category}' ({image_size} px, {epochs} epochs):")
    print_table(res)
    t = res["timings"]["per_task"][0]
    click.echo(f"training {t['train_seconds']:.1f} s ({res['timings']['mean_epoch_seconds']:.2f} s/epoch, "
               f"selected epoch {t['selected_epoch']}); run folder: {run_dir}")
