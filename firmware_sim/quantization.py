"""Affine integer quantisation, x = scale * (q - zero_point): the one implementation that the latent codecs,
the interpreters' input/output tensors and the host's device-format latents share.

Per tensor, or per channel along ``axis``. Arithmetic follows the TFLite reference: quantise in float64
(round half to even) and clip to the integer range; dequantise to float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _along(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Reshape per-channel parameters to broadcast along ``axis`` of an ``ndim``-d array."""
    if axis is None or values.size == 1:
        return values.reshape(()) if values.size == 1 else values
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def minmax_params(groups: np.ndarray, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric min/max parameters for each row of ``groups`` (G, N) -> (scale float32, zero_point int64).

    The zero point is left unclamped (it may lie outside [qmin, qmax]): a latent channel whose range excludes
    0 then keeps its full resolution instead of stretching the range to include 0.
    """
    lo, hi = groups.min(axis=1), groups.max(axis=1)
    magnitude = np.maximum(np.abs(lo), np.abs(hi))
    # A floor on the scale keeps lo/scale (hence the int32 zero point) bounded for constant or near-constant
    # rows; their error is then ~1e-6 of their magnitude, below float32 resolution anyway.
    scale = np.maximum((hi - lo) / (qmax - qmin), magnitude * 2.0**-20)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    zero_point = np.round(qmin - lo / scale.astype(np.float64)).astype(np.int64)
    return scale, zero_point


def quantize(x: np.ndarray, scale: float | Sequence[float] | np.ndarray,
             zero_point: int | Sequence[int] | np.ndarray, qmin: int, qmax: int,
             axis: int | None = None) -> np.ndarray:
    """round(x / scale) + zero_point, clipped to [qmin, qmax]; float64 values (cast them to the int type)."""
    x = np.asarray(x, np.float64)
    s = _along(np.asarray(scale, np.float32).astype(np.float64).ravel(), x.ndim, axis)
    zp = _along(np.asarray(zero_point, np.int64).ravel(), x.ndim, axis)
    return np.clip(np.rint(x / s) + zp, qmin, qmax)


def dequantize(q: np.ndarray, scale: float | Sequence[float] | np.ndarray,
               zero_point: int | Sequence[int] | np.ndarray, axis: int | None = None) -> np.ndarray:
    """scale * (q - zero_point) in float32; per channel along ``axis`` when there are several scales."""
    q = np.asarray(q)
    s = _along(np.asarray(scale, np.float32).ravel(), q.ndim, axis)
    zp = _along(np.asarray(zero_point, np.int64).ravel(), q.ndim, axis)
    return ((q.astype(np.int64) - zp).astype(np.float32) * s).astype(np.float32)
