"""`edgead export`: a run's checkpoint -> int8 TFLite / ONNX artifacts, manifest.json and fidelity.json."""

from __future__ import annotations

from pathlib import Path

import click

from edgead.config_file import config_option

# No tensorflow at import: this module loads only for `edgead export`.
from edgead.export.tflite import GRANULARITIES


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def print_summary(result: dict) -> None:
    fid, man = result["fidelity"], result["manifest"]
    click.echo(f"fidelity on {fid['test_images']} test images ({', '.join(fid['tasks'])}), vs the float model:")
    click.echo(f"  {'format':<12} {'path':<11} {'image AUROC':>17} {'pixel AUROC':>17} {'map cos':>8} "
               f"{'score rho':>9} {'latent err':>10} {'bytes':>10}")
    for fmt, per in fid["formats"].items():
        for path, r in per.items():
            ia, pa = r["image_auroc"], r["pixel_auroc"]
            lat = r["latent"]["relative_l2_mean"] if r["latent"] else None
            flag = "" if r["within_tolerance"] else "  DRIFT"
            click.echo(f"  {fmt:<12} {path:<11} {_fmt(ia['float'])} -> {_fmt(ia['format'])} "
                       f"{_fmt(pa['float'])} -> {_fmt(pa['format'])} {_fmt(r['map_cosine_mean']):>8} "
                       f"{_fmt(r['score_spearman'], 3):>9} {_fmt(lat, 3):>10} "
                       f"{man['formats'][fmt]['bytes'][path]:>10,}{flag}")


@click.command("export")
@config_option
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder (edgead train --out).")
@click.option("--task", "task_index", type=int, default=None, help="Checkpoint after this task (default: the last).")
@click.option("--format", "formats", default="tflite-int8,onnx,onnx-int8", show_default=True,
              help="Comma-separated: tflite-int8 (mcunet-in3 only), onnx, onnx-int8, edgetpu (tflite-int8 compiled "
              "for the Coral Edge TPU; needs edgetpu_compiler on PATH).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Artifact folder.")
@click.option("--calibration", default=32, show_default=True,
              help="Normal training images used to calibrate the int8 ranges (seeded; all there are when fewer "
              "exist; a warning below 8).")
@click.option("--io", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="TFLite input and output type (int8 keeps the latent byte-compatible with the replay buffer).")
@click.option("--tflite-weights", type=click.Choice(GRANULARITIES), default="per-channel",
              show_default=True, help="int8 weight scales: mixed = per-tensor 1x1 convs (about 7% smaller, "
              "costs pixel AUROC; see benchmarks/study_size.py).")
@click.option("--allow-drift", is_flag=True, help="Publish even when a format's AUROC falls past the tolerance.")
@click.option("--max-image-auroc-drop", default=0.02, show_default=True)
@click.option("--max-pixel-auroc-drop", default=0.01, show_default=True)
@click.option("--data", "data_root", default=None, type=click.Path(path_type=Path),
              help="Dataset root, if it has moved since training.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder (and an existing --bundle).")
@click.option("--bundle", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Also write a device bundle here (folder + .tar.gz: firmware_sim, the artifact, "
              "requirements-device.txt, README); same as `edgead device bundle ART OUT`.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
def export_cmd(run_dir, task_index, formats, out, calibration, io, tflite_weights, allow_drift, max_image_auroc_drop,
               max_pixel_auroc_drop, data_root, force, bundle, quiet):
    """Export a run's checkpoint for devices, check its fidelity on held-out test images, write a manifest."""
    from edgead import console
    from edgead.export.fidelity import Tolerance
    from edgead.export.formats import parse_formats
    from edgead.export.pipeline import ExportDrift, ExportOptions, export_run

    opts = ExportOptions(formats=parse_formats(formats), task=task_index, calibration=calibration, io=io,
                         tflite_weights=tflite_weights,
                         tolerance=Tolerance(max_image_auroc_drop, max_pixel_auroc_drop), allow_drift=allow_drift,
                         data_root=data_root, force=force)
    if bundle is not None:
        from firmware_sim.bundle import check_out

        # before a minute of export work; the bundle may not be (or hold) the run, the artifact or the data
        check_out(bundle, True, force, inputs=[run_dir, out, data_root])
    try:
        quiet = quiet or console.level() <= console.QUIET
        result = export_run(run_dir, out, opts, log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)),
                            warn=lambda m: click.echo(f"warning: {m}", err=True))
    except ExportDrift as e:
        print_summary(e.result)
        raise
    print_summary(result)
    click.echo(f"wrote {out} ({len(result['manifest']['files'])} files, manifest verified)")
    if bundle is not None:
        from firmware_sim.bundle import make_bundle

        b = make_bundle(out, bundle, formats, force=force)
        click.echo(f"wrote device bundle {b['bundle']} and {b['archive']} ({b['files']} files)")
