"""`edgead info`: parameters, bytes, MACs and peak memory of a detector."""

from __future__ import annotations

import json

import click

from edgead.cli.options import detector_config, detector_options


@click.command()
@detector_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(model, backbone, levels, bootstrap, image_size, as_json):
    """Parameters (teacher, student, shared once), bytes, MACs, latent shape and int8 peak activation."""
    from edgead.models.cost import detector_cost
    from edgead.models.teacher_student import TeacherStudent

    cfg = detector_config(model, backbone, levels, bootstrap, image_size, pretrained=False)
    d = detector_cost(TeacherStudent(cfg, load_teacher=False))
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    p = d["params"]
    click.echo(f"{cfg.model} / {cfg.backbone}  levels {list(cfg.levels)}  bootstrap {cfg.bootstrap}  "
               f"{image_size} px")
    click.echo(f"  params: teacher {p['teacher']:,}  student {p['student']:,}  shared {p['shared']:,}  "
               f"total {p['total']:,}")
    click.echo(f"  architecture: {d['architecture_bytes']['fp32']:,} B fp32 ({d['architecture_mib_fp32']:.3f} MiB), "
               f"{d['architecture_bytes']['int8']:,} B int8")
    click.echo(f"  MACs/image: {d['macs']['total'] / 1e6:.1f}M (trunk {d['macs']['trunk'] / 1e6:.1f}M, "
               f"teacher tail {d['macs']['teacher_tail'] / 1e6:.1f}M, student tail {d['macs']['student_tail'] / 1e6:.1f}M)")
    click.echo(f"  latent: {d['latent_shape']}  peak activation (int8): {d['peak_activation_bytes_int8']:,} B")
