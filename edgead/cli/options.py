"""Click options generated from the configuration dataclasses (edgead.options): one definition of each option.

`dataclass_options(TrainConfig, ReplayConfig)` adds one `--name` per field, with the field's default, help
text and choices; `build(values)` turns the command's values back into the dataclasses. A field added to a
dataclass with `edgead.options.option(...)` is therefore on the command line with no edit here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgead.options import Spec, parse_levels, specs, take

__all__ = ["dataclass_options", "detector_config", "detector_options", "parse_levels", "take_options"]


def _click_type(s: Spec):
    if s.choices is not None:
        return click.Choice(s.choices)
    t = str(s.type)
    if "Path" in t:
        return click.Path(path_type=Path)
    if s.parse is not None or isinstance(s.default, str | list | tuple):
        return str  # parsed by the dataclass side (edgead.options.take)
    if "float" in t:
        return float
    if "int" in t:
        return int
    return None


def click_option(s: Spec):
    """The click option of one Spec."""
    if isinstance(s.default, bool):
        # an inverted flag (--no-pretrained, --quiet) or a plain on/off flag (--allow-drift)
        return click.option(s.cli_name, s.param, is_flag=True, default=False, help=s.help)
    default = s.default
    if isinstance(default, tuple | list):  # shown and parsed as text: 6,10,14
        default = ",".join(map(str, default))
    show = s.default_text if s.default_text is not None else (default is not None)
    if s.default_text is not None:
        default = None  # a placeholder: the dataclass side fills it (the backbone's levels, the device formats)
    return click.option(s.cli_name, s.param, type=_click_type(s), default=default, show_default=show, help=s.help)


def dataclass_options(*classes: type, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None):
    """A decorator adding the options of these dataclasses (field order), except those named in `skip` (or
    only those named in `only`)."""
    opts = [click_option(s) for cls in classes for s in specs(cls)
            if s.cli and s.name not in skip and (only is None or s.name in only)]

    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def cli_values(values: dict[str, Any], *classes: type) -> dict[str, Any]:
    """Click's parameter values -> option names (inverted flags turned back: --quiet -> progress=False)."""
    out = dict(values)
    for cls in classes:
        for s in specs(cls):
            if s.param == s.name or s.param not in out:
                continue
            v = out.pop(s.param)
            out[s.name] = ((not s.default) if v else s.default) if s.flag else v
    return out


def take_options(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The constructor keywords of `cls` from click values (removed from `values`); see edgead.options.take."""
    conv = cli_values({s.param: values.pop(s.param) for s in specs(cls) if s.param in values}, cls)
    return take(cls, conv)


def detector_options(f):
    """The architecture: --model, --backbone, --levels, --bootstrap, --image-size (DetectorConfig's fields)."""
    from edgead.models.teacher_student import DetectorConfig

    return dataclass_options(DetectorConfig, only=("model", "backbone", "levels", "bootstrap", "image_size"))(f)


def detector_config(model, backbone, levels, bootstrap, image_size, pretrained=True):
    """The DetectorConfig that detector_options' values describe."""
    from edgead.models.teacher_student import DetectorConfig

    return DetectorConfig.defaults(model, backbone, levels=parse_levels(levels), bootstrap=bootstrap,
                                   image_size=image_size, pretrained=pretrained)
