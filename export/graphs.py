"""Which graphs an export holds and their interface: names, roles and the torch modules behind them.

PaSTe: ``trunk`` (image -> latent, the tensor a device keeps in its replay buffer), ``head`` (latent ->
teacher and student features at every level) and ``full`` (image -> the same features, one graph for
inference-only devices). STFPM: ``full`` only (its "latent" is the image itself).

Every graph stops at the level features: the distance (normalise, squared difference, upsample, multiply)
runs in the runtime with firmware_sim.anomaly_map, in float (measured in benchmarks/study_distance.py).

Image inputs are RGB pixels 0..255 (Preprocess.resize_uint8) and the graph normalises them itself, so a
device feeds camera bytes directly; the int8 TFLite input then has scale 1 and is lossless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgead.models.teacher_student import TeacherStudent
from firmware_sim.preprocess import Preprocess

IMAGE = "image"
LATENT = "latent"


def feature_names(levels: tuple[int, ...]) -> list[str]:
    """Output names in the one fixed order every format uses: teacher_l, student_l for each level."""
    return [f"{who}_{level}" for level in levels for who in ("teacher", "student")]


@dataclass(frozen=True)
class GraphSpec:
    name: str  # trunk | head | full
    input: str  # IMAGE or LATENT
    outputs: tuple[str, ...]


def graph_specs(model: TeacherStudent) -> list[GraphSpec]:
    feats = tuple(feature_names(model.config.levels))
    if model.trunk is None:
        return [GraphSpec("full", IMAGE, feats)]
    return [GraphSpec("trunk", IMAGE, (LATENT,)), GraphSpec("head", LATENT, feats), GraphSpec("full", IMAGE, feats)]


class PixelNormalise(nn.Module):
    """(pixel / 255 - mean) / std as a 1x1 depthwise conv: per-channel int8 weights represent it exactly."""

    def __init__(self, pre: Preprocess):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, groups=3, bias=True)
        std = torch.tensor(pre.std, dtype=torch.float64)
        with torch.no_grad():
            self.conv.weight.copy_((1.0 / (255.0 * std)).view(3, 1, 1, 1).float())
            self.conv.bias.copy_((-torch.tensor(pre.mean, dtype=torch.float64) / std).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Features(nn.Module):
    """latent -> (teacher_l, student_l, ...) in feature_names order."""

    def __init__(self, model: TeacherStudent):
        super().__init__()
        self.teacher_tail, self.student_tail = model.teacher_tail, model.student_tail
        self.levels = model.config.levels

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = self.teacher_tail(z, self.levels)
        s = self.student_tail(z, self.levels)
        return tuple(f for pair in zip(t, s, strict=True) for f in pair)


class _Trunk(nn.Module):
    def __init__(self, model: TeacherStudent, pre: Preprocess):
        super().__init__()
        self.normalise, self.trunk = PixelNormalise(pre), model.trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.normalise(x))[0]


class _Full(nn.Module):
    def __init__(self, model: TeacherStudent, pre: Preprocess):
        super().__init__()
        self.normalise, self.trunk, self.features = PixelNormalise(pre), model.trunk, _Features(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.normalise(x)
        if self.trunk is not None:
            z = self.trunk(z)[0]
        return self.features(z)


def torch_graph(model: TeacherStudent, pre: Preprocess, name: str) -> nn.Module:
    """The float torch module behind a graph (NCHW; image inputs are float pixels 0..255)."""
    graph = {"trunk": lambda: _Trunk(model, pre), "head": lambda: _Features(model),
             "full": lambda: _Full(model, pre)}[name]()
    return graph.eval()


def input_shape(model: TeacherStudent, spec: GraphSpec) -> tuple[int, int, int, int]:
    """NCHW shape, batch 1."""
    s = model.config.image_size
    if spec.input == IMAGE:
        return (1, 3, s, s)
    return (1, *model.latent_shape())
