"""MCUNet-in3 (mcunet-320kb-1mb_imagenet) in plain torch, built from one spec of its blocks.

The spec below is the single source of truth for the architecture: the torch builder here, the analytic
cost model (edgead.models.cost) and any exporter mirror read it. Module and parameter names follow the
original ProxylessNAS code (first_conv, blocks.N.mobile_inverted_conv.{inverted_bottleneck,depth_conv,
point_linear}.{conv,bn}, classifier.linear) so the official checkpoint loads unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgead.models.backbones.registry import BackboneSpec, WeightSource, register

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class BlockSpec:
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    mid_ch: int  # == in_ch with no expansion conv (block 0)
    residual: bool

    @property
    def expands(self) -> bool:
        return self.mid_ch != self.in_ch


# first_conv: 3->16, k3, stride 2, BN, ReLU6. Then the 18 inverted-residual blocks (docs/mcunet-in3.md).
FIRST_CONV = BlockSpec(3, 16, 3, 2, 3, False)
MCUNET_IN3_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(16, 8, 3, 1, 16, False),
    BlockSpec(8, 16, 7, 2, 24, False),
    BlockSpec(16, 16, 3, 1, 80, True),
    BlockSpec(16, 16, 7, 1, 80, True),
    BlockSpec(16, 16, 5, 1, 64, True),
    BlockSpec(16, 24, 5, 2, 80, False),
    BlockSpec(24, 24, 5, 1, 120, True),
    BlockSpec(24, 24, 5, 1, 120, True),
    BlockSpec(24, 40, 3, 2, 120, False),
    BlockSpec(40, 40, 7, 1, 240, True),
    BlockSpec(40, 40, 5, 1, 160, True),
    BlockSpec(40, 48, 5, 1, 200, False),
    BlockSpec(48, 48, 7, 1, 240, True),
    BlockSpec(48, 48, 3, 1, 240, True),
    BlockSpec(48, 96, 3, 2, 288, False),
    BlockSpec(96, 96, 7, 1, 480, True),
    BlockSpec(96, 96, 3, 1, 384, True),
    BlockSpec(96, 160, 7, 1, 480, False),
)
NUM_CLASSES = 1000


class ConvBNAct(nn.Module):
    """conv -> BN (-> ReLU6). Attribute names `conv` and `bn` match the checkpoint."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=False) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBInvertedConv(nn.Module):
    def __init__(self, spec: BlockSpec):
        super().__init__()
        if spec.expands:
            self.inverted_bottleneck = ConvBNAct(spec.in_ch, spec.mid_ch, 1)
        self.depth_conv = ConvBNAct(spec.mid_ch, spec.mid_ch, spec.kernel, spec.stride, groups=spec.mid_ch)
        # The projection is linear (no activation): the output of a block is a BatchNorm output.
        self.point_linear = ConvBNAct(spec.mid_ch, spec.out_ch, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "inverted_bottleneck"):
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class MBBlock(nn.Module):
    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.spec = spec
        self.mobile_inverted_conv = MBInvertedConv(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mobile_inverted_conv(x)
        return x + y if self.spec.residual else y


class _Classifier(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.linear = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MCUNet(nn.Module):
    """MCUNet-in3. Stage 0 is first_conv + blocks.0 (layer index 0 includes first_conv); stage i>0 is blocks.i."""

    def __init__(self, blocks: tuple[BlockSpec, ...] = MCUNET_IN3_BLOCKS):
        super().__init__()
        self.block_specs = blocks
        self.first_conv = ConvBNAct(FIRST_CONV.in_ch, FIRST_CONV.out_ch, FIRST_CONV.kernel, FIRST_CONV.stride)
        self.blocks = nn.ModuleList(MBBlock(b) for b in blocks)
        self.classifier = _Classifier(blocks[-1].out_ch)

    def stages(self) -> list[nn.Module]:
        return [nn.Sequential(self.first_conv, self.blocks[0]), *self.blocks[1:]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return self.classifier(x.mean(dim=(2, 3)))


MCUNET_IN3 = register(
    BackboneSpec(
        name="mcunet-in3",
        build=MCUNet,
        weights=WeightSource(
            filename="mcunet-320kb-1mb_imagenet.pth",
            url="https://hanlab18.mit.edu/projects/tinyml/mcunet/release/mcunet-320kb-1mb_imagenet.pth",
            sha256="c0d4ccf4bb8ba93ef69a609c60ca053be2c6bab3b4ece19d9b7e66cec8a485e5",
            state_dict_key="state_dict",
            license="MIT (MIT HAN Lab, MCUNet)",
        ),
        num_stages=len(MCUNET_IN3_BLOCKS),
        default_levels=(6, 10, 14),
        default_bootstrap=5,
        native_input_size=176,
        notes="MCUNet-in3, ImageNet top-1 62.2% fp32; levels [6,10,14] and bootstrap 5 as in the thesis",
    )
)
