"""Anomaly-detection metrics (image and pixel level), AUPRO and continual-learning forgetting.

Ground truth comes first and scores second, as in scikit-learn. Image functions take labels and
scores of shape (N,); pixel functions take masks (bool or 0/1) and anomaly maps of shape (N, H, W).
Higher scores mean "more anomalous". Bad input raises :class:`edgead.errors.EdgeadError`.

How it is computed. Every ranking metric comes from one shared sort-based core, written in numpy
(scipy.ndimage only labels the connected defect regions); scikit-learn is not used at run time.
Each pixel is packed into one 64-bit key: the high 32 bits hold its score as float32, mapped to an
unsigned integer with the same order, and the low 32 bits hold its ground truth (0 = defect-free,
otherwise the 1-based index of its 8-connected defect region). The keys are built image by image
and sorted once, in place, so the only full-size buffer is 8 bytes per pixel (twice a float32 map
array), with no index array and no sorted copy of the maps. One pass over the sorted keys, in
descending score order and in chunks of 131,072 pixels, accumulates true and false positives as
int64 counts and emits a curve point only at the last pixel of each group of equal scores, so ties
are handled exactly like scikit-learn. From the same points: AUROC by the trapezoid rule over
(FPR, TPR), average precision as scikit-learn does it (sum over thresholds of (R_n - R_{n-1}) P_n),
and F1-max as the best 2 TP / (TP + FP + P) over all thresholds. AUPRO (MVTec AD) reuses the sort
with per-pixel weights: a defect-free pixel adds 1/num_background to the FPR, a pixel of region r
adds 1/(num_regions * size_r) to the PRO (float64 running sums), so at each distinct score the
mean per-region overlap and the FPR are exact; the curve from (0, 0) is integrated by the trapezoid
rule up to the FPR limit (linearly interpolated at exactly the limit; the pass stops there) and
divided by the limit, so a perfect map scores 1.0. `evaluate_all` gets all four pixel metrics from
a single sort. Image-level scores are few, so they are argsorted at full float64 precision and fed
to the same streaming core. Pixel scores are compared at float32 precision: two float64 map values
that round to the same float32 count as a tie.
"""

from __future__ import annotations

from edgead.errors import EdgeadError

from ._checks import image_inputs, pixel_inputs
from ._curve import image_stats
from .forgetting import forgetting, forgetting_per_task
from .pro import aupro, pixel_metrics
from .ranking import image_ap, image_auroc, image_f1_max, pixel_ap, pixel_auroc, pixel_f1_max

EVALUATE_ALL_KEYS = ("image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_ap", "aupro")


def evaluate_all(labels, scores, masks, maps, fpr_limit: float = 0.3, valid=None) -> dict[str, float]:
    """All image and pixel metrics of one test set, as plain floats.

    Keys: image_auroc, image_f1, pixel_auroc, pixel_f1, pixel_ap, aupro. ``labels``/``scores`` are
    (N,), ``masks``/``maps`` are (N, H, W) for the same N images. The pixel metrics share one sort.
    ``valid`` (optional bool (N, H, W)): only these pixels count in the pixel metrics (not the padding).
    """
    y, s = image_inputs(labels, scores)
    m, a = pixel_inputs(masks, maps)
    if m.shape[0] != y.shape[0]:
        raise EdgeadError(
            f"labels has {y.shape[0]} entries but masks has {m.shape[0]} images: expected the same N images"
        )
    image = image_stats(y, s)
    pixel = pixel_metrics(m, a, fpr_limit=fpr_limit, valid=valid)
    out = {"image_auroc": image["auroc"], "image_f1": image["f1"], **pixel}
    return {k: float(out[k]) for k in EVALUATE_ALL_KEYS}


__all__ = [
    "EVALUATE_ALL_KEYS",
    "aupro",
    "evaluate_all",
    "forgetting",
    "forgetting_per_task",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_metrics",
]
