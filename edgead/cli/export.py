"""`edgead export`: a run's checkpoint -> int8 TFLite / ONNX artifacts, manifest.json and fidelity.json."""

from __future__ import annotations

from pathlib import Path

import click

from edgead.cli.options import dataclass_options, take_options
from edgead.config_file import config_option

# No tensorflow at import (edgead.export.tflite imports it lazily): this module loads only for `edgead export`.
from edgead.export.pipeline import ExportOptions


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
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Artifact folder.")
@dataclass_options(ExportOptions)
@click.option("--bundle", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Also write a device bundle here (folder + .tar.gz: firmware_sim, the artifact, "
              "requirements-device.txt, README); same as `edgead device bundle ART OUT`.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
def export_cmd(run_dir, out, bundle, quiet, **options):
    """Export a run's checkpoint for devices, check its fidelity on held-out test images, write a manifest.

    The export options are the fields of ExportOptions (edgead.options), the keywords of `Detector.export`.
    """
    from edgead import console
    from edgead.export.pipeline import ExportDrift, export_run

    opts = ExportOptions(**take_options(ExportOptions, options))
    if bundle is not None:
        from firmware_sim.bundle import check_out

        # before a minute of export work; the bundle may not be (or hold) the run, the artifact or the data
        check_out(bundle, True, opts.force, inputs=[run_dir, out, opts.data_root])
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

        b = make_bundle(out, bundle, opts.formats, force=opts.force)
        click.echo(f"wrote device bundle {b['bundle']} and {b['archive']} ({b['files']} files)")
