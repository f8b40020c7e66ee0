"""Image- and pixel-level AUROC, average precision and F1-max (threshold-free ranking metrics)."""

from __future__ import annotations

from ._checks import image_inputs, pixel_inputs
from ._curve import BinaryStats, PixelKeys, image_stats, require_both_classes, walk


def _image(labels, scores) -> dict[str, float]:
    y, s = image_inputs(labels, scores)
    return image_stats(y, s)


def pixel_stats(masks, maps) -> dict[str, float]:
    """Pixel AUROC, AP and F1-max from one sort: keys ``auroc``, ``ap``, ``f1``."""
    m, a = pixel_inputs(masks, maps)
    keys = PixelKeys(m, a, regions=False)
    require_both_classes(keys)
    acc = BinaryStats(keys.n_pos, keys.n_neg)
    walk(keys.n, keys.fetch, [acc])
    return acc.result()


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores; equals ``sklearn.metrics.roc_auc_score(labels, scores)``.

    ``labels``: (N,) bool or 0/1 (1 = anomalous); ``scores``: (N,) higher = more anomalous.
    """
    return _image(labels, scores)["auroc"]


def image_ap(labels, scores) -> float:
    """Average precision of image scores; equals ``sklearn.metrics.average_precision_score``."""
    return _image(labels, scores)["ap"]


def image_f1_max(labels, scores) -> float:
    """Best F1 over all thresholds (the points of ``sklearn.metrics.precision_recall_curve``)."""
    return _image(labels, scores)["f1"]


def pixel_auroc(masks, maps) -> float:
    """ROC AUC over all pixels of all images. ``masks``: (N, H, W) bool or 0/1; ``maps``: (N, H, W) scores.

    Scores are compared at float32 precision (anomaly maps are float32 in edgead).
    """
    return pixel_stats(masks, maps)["auroc"]


def pixel_ap(masks, maps) -> float:
    """Average precision (PR-AUC as scikit-learn computes it) over all pixels of all images."""
    return pixel_stats(masks, maps)["ap"]


def pixel_f1_max(masks, maps) -> float:
    """Best pixel F1 over all thresholds, over all pixels of all images."""
    return pixel_stats(masks, maps)["f1"]
