"""A Keras mirror of MCUNet-in3 stages with the torch weights copied in, for full-int8 TFLite conversion.

Built from ``MCUNET_IN3_BLOCKS`` / ``FIRST_CONV`` (the single spec of the architecture); the torch modules
only supply weights, and every copied tensor's shape is checked against the spec, so a spec/module drift
fails loudly here instead of converting a wrong network.

Why these choices (docs/toolchain.md):
- BatchNorm is folded into the preceding conv in float64 (eps from the torch module, 1e-5), which is what
  the converter would do anyway, and it avoids Keras' default eps of 1e-3.
- Stride-2 convs get an explicit symmetric ZeroPadding2D + 'valid': TF's 'same' pads asymmetrically
  (more at the bottom/right) when the stride is 2, unlike torch's padding=k//2.
- The image models take raw RGB pixels (0..255) and normalise inside the graph, *before* the zero padding,
  so padding means "normalised 0" exactly as in torch. The int8 input then carries the camera's pixels
  with scale 1, which the device feeds without any float arithmetic (see tflite.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from edgead.errors import EdgeadError
from edgead.models.backbones.mcunet import FIRST_CONV, MCUNET_IN3_BLOCKS, BlockSpec


def _fold(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight (O, I, kh, kw) and BN -> folded weight and bias (float32)."""
    w = conv.weight.detach().double().numpy()
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    mean, var = bn.running_mean.detach().double().numpy(), bn.running_var.detach().double().numpy()
    k = gamma / np.sqrt(var + bn.eps)
    bias = beta - mean * k
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double().numpy() * k
    return (w * k[:, None, None, None]).astype(np.float32), bias.astype(np.float32)


def _expect(what: str, have: tuple[int, ...], want: tuple[int, ...]) -> None:
    if tuple(have) != tuple(want):
        raise EdgeadError(f"Keras mirror: {what} has shape {tuple(have)} but the MCUNet spec says {tuple(want)}")


class _Builder:
    """Appends Keras layers for one conv+BN(+ReLU6) at a time, with unique, readable layer names."""

    def __init__(self, prefix: str):
        import keras

        self.keras = keras
        self.prefix = prefix

    def conv(self, x, unit, spec_in: int, spec_out: int, k: int, stride: int, depthwise: bool, act: bool,
             name: str):
        L = self.keras.layers
        w, b = _fold(unit.conv, unit.bn)
        if depthwise:
            _expect(f"{name} depthwise weight", w.shape, (spec_in, 1, k, k))
            kw = np.transpose(w, (2, 3, 0, 1))  # (C,1,kh,kw) -> (kh,kw,C,1)
        else:
            _expect(f"{name} conv weight", w.shape, (spec_out, spec_in, k, k))
            kw = np.transpose(w, (2, 3, 1, 0))  # (O,I,kh,kw) -> (kh,kw,I,O)
        padding = "same"
        if stride > 1 and k > 1:
            x = L.ZeroPadding2D(k // 2, name=f"{self.prefix}{name}_pad")(x)
            padding = "valid"
        layer_cls = L.DepthwiseConv2D if depthwise else L.Conv2D
        kwargs = {"kernel_size": k, "strides": stride, "padding": padding, "use_bias": True,
                  "name": f"{self.prefix}{name}"}
        layer = layer_cls(**kwargs) if depthwise else layer_cls(spec_out, **kwargs)
        x = layer(x)
        layer.set_weights([kw, b])
        if act:
            x = L.ReLU(max_value=6.0, name=f"{self.prefix}{name}_relu6")(x)
        return x

    def block(self, x, block_module, spec: BlockSpec, index: int):
        inv = block_module.mobile_inverted_conv
        y = x
        if spec.expands:
            y = self.conv(y, inv.inverted_bottleneck, spec.in_ch, spec.mid_ch, 1, 1, False, True, f"b{index}_expand")
        y = self.conv(y, inv.depth_conv, spec.mid_ch, spec.mid_ch, spec.kernel, spec.stride, True, True,
                      f"b{index}_dw")
        y = self.conv(y, inv.point_linear, spec.mid_ch, spec.out_ch, 1, 1, False, False, f"b{index}_project")
        if spec.residual:
            y = self.keras.layers.Add(name=f"{self.prefix}b{index}_add")([x, y])
        return y


def build_stages(x, stages, levels: Sequence[int], prefix: str) -> list:
    """Apply a torch ``Stages`` (MCUNet-in3) as Keras layers to tensor x; returns the outputs at ``levels``
    (or the last output when levels is empty), like ``Stages.forward``."""
    b = _Builder(prefix)
    outs = []
    for i, module in enumerate(stages.stages, start=stages.first_index):
        if i >= len(MCUNET_IN3_BLOCKS):
            raise EdgeadError(f"Keras mirror: stage {i} is beyond MCUNet-in3's {len(MCUNET_IN3_BLOCKS)} blocks")
        if i == 0:  # stage 0 = first_conv + block 0
            first, block0 = module[0], module[1]
            f = FIRST_CONV
            x = b.conv(x, first, f.in_ch, f.out_ch, f.kernel, f.stride, False, True, "first_conv")
            x = b.block(x, block0, MCUNET_IN3_BLOCKS[0], 0)
        else:
            x = b.block(x, module, MCUNET_IN3_BLOCKS[i], i)
        if i in levels:
            outs.append(x)
    return outs if levels else [x]


def pixel_normalisation(x, mean: Sequence[float], std: Sequence[float], name: str = "normalise"):
    """(pixel / 255 - mean) / std per channel, as one 1x1 depthwise conv (one int8 op, per-channel scales)."""
    import keras

    layer = keras.layers.DepthwiseConv2D(1, use_bias=True, name=name)
    y = layer(x)
    std = np.asarray(std, np.float64)
    w = (1.0 / (255.0 * std)).reshape(1, 1, 3, 1)
    bias = -np.asarray(mean, np.float64) / std
    layer.set_weights([w.astype(np.float32), bias.astype(np.float32)])
    return y
