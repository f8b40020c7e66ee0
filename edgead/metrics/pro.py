"""AUPRO: area under the per-region-overlap curve up to a false positive rate limit (MVTec AD)."""

from __future__ import annotations

import numpy as np

from edgead.errors import EdgeadError

from ._checks import pixel_inputs
from ._curve import BinaryStats, PixelKeys, ProIntegral, check_fpr_limit, require_both_classes, walk


def _region_keys(masks, maps, valid=None) -> PixelKeys:
    m, a = pixel_inputs(masks, maps)
    keys = PixelKeys(m, a, regions=True, valid=None if valid is None else np.asarray(valid, bool))
    if keys.n_regions == 0:
        raise EdgeadError(
            "masks has no defect regions: AUPRO needs at least one 1 (defect) pixel in some mask"
        )
    if keys.n_neg == 0:
        raise EdgeadError("masks has no defect-free pixels: AUPRO needs some 0 pixels to measure the FPR")
    return keys


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve for FPR in [0, ``fpr_limit``] (1.0 for a perfect map).

    Regions are the 8-connected components of each ground-truth mask. At each threshold t
    (every distinct score), PRO(t) = mean over all regions of all images of the fraction of the
    region's pixels with score >= t, and FPR(t) = fraction of all defect-free pixels (of all images)
    with score >= t. The curve starts at (0, 0), is integrated with the trapezoid rule, cut at exactly
    ``fpr_limit`` by linear interpolation, and divided by ``fpr_limit``. Images without defects
    contribute background pixels only. Scores are compared at float32 precision.
    """
    limit = check_fpr_limit(fpr_limit)
    keys = _region_keys(masks, maps)
    acc = ProIntegral(keys.n_neg, limit)
    walk(keys.n, keys.fetch, [acc], lut=keys.pro_lut())
    return acc.result()


def pixel_metrics(masks, maps, fpr_limit: float = 0.3, valid=None) -> dict[str, float]:
    """Pixel AUROC, F1-max, AP and AUPRO from a single sort of the pixels.

    valid: optional bool (N, H, W); pixels outside it (letterbox padding) are left out of every metric.
    """
    limit = check_fpr_limit(fpr_limit)
    keys = _region_keys(masks, maps, valid)
    require_both_classes(keys)
    binary = BinaryStats(keys.n_pos, keys.n_neg)
    pro = ProIntegral(keys.n_neg, limit)
    walk(keys.n, keys.fetch, [binary, pro], lut=keys.pro_lut())
    stats = binary.result()
    return {
        "pixel_auroc": stats["auroc"],
        "pixel_f1": stats["f1"],
        "pixel_ap": stats["ap"],
        "aupro": pro.result(),
    }
