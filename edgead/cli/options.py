"""Options shared by several verbs: the detector's architecture."""

from __future__ import annotations

import click

from edgead.errors import EdgeadError


def parse_levels(text: str | None) -> tuple[int, ...] | None:
    """'6,10,14' -> (6, 10, 14); None stays None (the backbone's default levels)."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgeadError(f"levels {text!r}: expected comma-separated stage indices such as 6,10,14") from None


def detector_options(f):
    """--model, --backbone, --levels, --bootstrap, --image-size."""
    for opt in reversed([
        click.option("--model", type=click.Choice(["stfpm", "paste"]), default="paste", show_default=True),
        click.option("--backbone", default="mcunet-in3", show_default=True,
                     help="mcunet-in3, mobilenet_v2 or resnet18."),
        click.option("--levels", default=None, help="Feature levels (stage indices), e.g. 6,10,14."),
        click.option("--bootstrap", type=int, default=None, help="Last shared stage (PaSTe)."),
        click.option("--image-size", type=int, default=256, show_default=True),
    ]):
        f = opt(f)
    return f


def detector_config(model, backbone, levels, bootstrap, image_size, pretrained=True):
    """The DetectorConfig that detector_options' values describe."""
    from edgead.models.teacher_student import DetectorConfig

    return DetectorConfig.defaults(model, backbone, levels=parse_levels(levels), bootstrap=bootstrap,
                                   image_size=image_size, pretrained=pretrained)
