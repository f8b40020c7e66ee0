"""`edgead analyze channels|tsne|selective`: the thesis's exploratory feature analysis (edgead/analysis)."""

from __future__ import annotations

from pathlib import Path

import click

from edgead.cli.options import detector_config, detector_options


def _common(f):
    for opt in reversed([
        click.option("--data", "root", required=True, type=click.Path(path_type=Path),
                     help="Dataset root (MVTec layout)."),
        click.option("--tasks", default=None, help="Comma-separated categories in order (default: all)."),
        detector_options,
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Folder for the PNGs and the JSON."),
        click.option("--seed", default=0, show_default=True),
        click.option("--weights", default=None, type=click.Path(path_type=Path),
                     help="Backbone ImageNet weights file or folder."),
        click.option("--val-fraction", default=0.1, show_default=True,
                     help="Held-out share of the normal training images (excluded, as in training)."),
        click.option("--variance", default=0.95, show_default=True,
                     help="PCA keeps the leading components explaining this share of the variance."),
        click.option("--max-patches", default=20_000, show_default=True,
                     help="Normal training patches sampled per level for the PCA."),
    ]):
        f = opt(f)
    return f


def _setup(root, tasks, percent, model, backbone, levels, bootstrap, image_size, variance, max_patches):
    """Every check that needs no weights first, so bad input fails in a second, not after loading models."""
    from edgead.analysis.channels import check_pca_options
    from edgead.analysis.features import parse_percents, task_stream

    percents = parse_percents(percent)
    check_pca_options(variance, max_patches)
    det = detector_config(model, backbone, levels, bootstrap, image_size)
    return task_stream(root, tasks), det, percents


def _log(message: str) -> None:
    click.echo(message, err=True)


@click.group()
def analyze() -> None:
    """Feature analysis: PCA channel importance, t-SNE of the top channels, feature-selective fine-tuning."""


@analyze.command()
@_common
@click.option("--percent", default="1,5,10,25,50,100", show_default=True,
              help="Top-channel shares (%) to select, each in (0, 100].")
def channels(root, tasks, model, backbone, levels, bootstrap, image_size, out, seed, weights, val_fraction,
             variance, max_patches, percent):
    """Channel importance of each feature level by PCA over normal training patches; top p% per level."""
    from edgead.analysis.channels import analyze_channels
    from edgead.analysis.features import build_teacher_student, percent_key
    from firmware_sim.preprocess import Preprocess

    stream, det, percents = _setup(root, tasks, percent, model, backbone, levels, bootstrap, image_size,
                                   variance, max_patches)
    ts = build_teacher_student(det, weights, seed)
    res = analyze_channels(stream, ts, Preprocess(image_size=det.image_size), percents, out,
                           variance=variance, max_patches=max_patches, val_fraction=val_fraction, seed=seed,
                           log=_log)
    key = percent_key(percents[0])  # the smallest share: the thesis's plots are at 1%
    for name, cat in res["categories"].items():
        for rec in cat["levels"]:
            click.echo(f"{name:<14} level {rec['level']:>2}: {rec['channels']:>3} channels, "
                       f"{rec['n_components']:>3} PCs; top {key}% = {rec['selected'][key]} "
                       f"({rec['importance_captured'][key]:.1%} of the importance)")
    click.echo(f"wrote {Path(out) / 'channels.json'} and {len(res['figures'])} PNG(s)")


@analyze.command()
@_common
@click.option("--percent", default="1", show_default=True,
              help="Top-channel shares (%) to plot, each in (0, 100].")
@click.option("--max-points", default=400, show_default=True, help="Patches per group (normal, anomalous).")
@click.option("--min-coverage", default=0.5, show_default=True,
              help="Defect share of a patch's area for it to count as anomalous.")
@click.option("--perplexity", default=30.0, show_default=True)
def tsne(root, tasks, model, backbone, levels, bootstrap, image_size, out, seed, weights, val_fraction,
         variance, max_patches, percent, max_points, min_coverage, perplexity):
    """t-SNE of the top p% channels: normal against anomalous test patches, per category and level."""
    from edgead.analysis.features import build_teacher_student
    from edgead.analysis.tsne import analyze_tsne, check_tsne_options
    from firmware_sim.preprocess import Preprocess

    stream, det, percents = _setup(root, tasks, percent, model, backbone, levels, bootstrap, image_size,
                                   variance, max_patches)
    check_tsne_options(max_points, min_coverage, perplexity)
    ts = build_teacher_student(det, weights, seed)
    res = analyze_tsne(stream, ts, Preprocess(image_size=det.image_size), percents, out,
                       max_points=max_points, min_coverage=min_coverage, perplexity=perplexity,
                       variance=variance, max_patches=max_patches, val_fraction=val_fraction, seed=seed,
                       log=_log)
    for name, per_p in res["categories"].items():
        for key, entry in per_p.items():
            cells = "  ".join(f"L{r['level']}: {r['n_normal']}/{r['n_anomalous']} sil "
                              + ("n/a" if r["silhouette"] is None else f"{r['silhouette']:.2f}")
                              for r in entry["levels"])
            click.echo(f"{name:<14} top {key}%  normal/anomalous patches  {cells}")
    click.echo(f"wrote {Path(out) / 'tsne.json'} and {len(res['figures'])} PNG(s)")


@analyze.command()
@_common
@click.option("--percent", default="1,5,10,25,50,100", show_default=True,
              help="Top-channel shares (%) to train on, each in (0, 100].")
@click.option("--epochs", default=20, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=0.4, show_default=True)
@click.option("--select-every", default=1, show_default=True,
              help="Epochs between model-selection checks on held-out normals (0: keep the last epoch).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def selective(root, tasks, model, backbone, levels, bootstrap, image_size, out, seed, weights, val_fraction,
              variance, max_patches, percent, epochs, batch_size, lr, select_every, device, quiet):
    """Feature-selective fine-tuning over the task stream: final image/pixel F1 against the top p%."""
    from edgead.analysis.selective import run_selective
    from edgead.engine.trainer import TrainConfig

    stream, det, percents = _setup(root, tasks, percent, model, backbone, levels, bootstrap, image_size,
                                   variance, max_patches)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      select_every=select_every, val_fraction=val_fraction, progress=not quiet)
    res = run_selective(stream, det, cfg, percents, out, weights=weights, variance=variance,
                        max_patches=max_patches, log=_log)
    click.echo(f"{'top %':>6} {'channels':>14} {'image F1':>9} {'pixel F1':>9}")
    for key, r in res["percents"].items():
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        click.echo(f"{key:>6} {'/'.join(str(n) for n in r['n_channels'].values()):>14} "
                   f"{fmt(r['image_f1']):>9} {fmt(r['pixel_f1']):>9}")
    click.echo(f"wrote {Path(out) / 'selective.json'} and {Path(out) / res['figures']['f1']}")
