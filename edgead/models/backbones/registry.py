"""A registry of backbones by name, each with its pretrained-weight source beside its builder (timm style).

A backbone is an ``nn.Module`` whose ``stages()`` returns its feature stages in order. "Level i" in a
detector's configuration is the output of stage i; a shared trunk is stages 0..bootstrap and a tail is
stages bootstrap+1..max(levels). Stages keep the original parameter names of the published weights, so
official checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from edgead.errors import EdgeadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's pretrained ImageNet weights come from and how to recognise a good file."""

    filename: str
    url: str
    sha256: str | None = None
    # Key inside the checkpoint dict that holds the state dict (MCUNet: 'state_dict'); None: top level.
    state_dict_key: str | None = None
    # A registry package that ships the same file, for machines with no internet (module, path in it).
    packaged: tuple[str, str] | None = None
    license: str = ""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[], nn.Module]
    weights: WeightSource
    num_stages: int
    default_levels: tuple[int, ...]
    default_bootstrap: int | None = None  # for PaSTe; None: PaSTe not recommended for this backbone
    native_input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    notes: str = field(default="", compare=False)


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    # Importing the builders registers them; done lazily to keep `edgead --help` fast.
    from edgead.models.backbones import mcunet, mobilenetv2, resnet  # noqa: F401


def available_backbones() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EdgeadError(
            f"unknown backbone {name!r}: expected one of {', '.join(sorted(_REGISTRY))}"
        ) from None
