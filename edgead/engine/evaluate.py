"""Test-set evaluation with every metric, and deployment calibration on held-out normals."""

from __future__ import annotations

import numpy as np

from edgead.data.loading import LoadedSplit
from edgead.engine.tensors import predict_images
from edgead.engine.views import predict_split
from edgead.metrics import evaluate_all, image_auroc, image_f1_max, pixel_auroc, pixel_metrics
from edgead.models.teacher_student import Calibration
from firmware_sim.preprocess import Preprocess

THRESHOLD_QUANTILE = 0.99


def evaluate_split(model, split: LoadedSplit, pre: Preprocess, device: str = "cpu",
                   return_outputs: bool = False) -> dict:
    maps, scores = predict_split(model, split, pre, device=device)
    labels = split.labels
    if split.has_masks:
        metrics = evaluate_all(labels, scores, split.masks, maps, valid=split.valid)
    else:  # anomalous images without masks: image metrics only
        metrics = {"image_auroc": image_auroc(labels, scores), "image_f1": image_f1_max(labels, scores),
                   "pixel_auroc": None, "pixel_f1": None, "pixel_ap": None, "aupro": None}
    metrics = {k: (None if v is None else float(v)) for k, v in metrics.items()}
    cal = getattr(model, "calibration", None)
    if cal is not None and np.isfinite(cal.threshold):
        pred = scores > cal.threshold
        metrics["deployed_accuracy"] = float((pred == (labels == 1)).mean())
        metrics["deployed_fpr"] = float(pred[labels == 0].mean()) if (labels == 0).any() else None
        metrics["deployed_tpr"] = float(pred[labels == 1].mean()) if (labels == 1).any() else None
        tp, fp = int((pred & (labels == 1)).sum()), int((pred & (labels == 0)).sum())
        fn = int((~pred & (labels == 1)).sum())
        metrics["deployed_f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    if return_outputs:
        return {"metrics": metrics, "maps": maps, "scores": scores}
    return metrics


def per_defect_metrics(split: LoadedSplit, maps: np.ndarray, scores: np.ndarray) -> dict:
    """Per defect type: image AUROC against the good images, pixel AUROC on its images, its share of all
    defect pixels (which type dominates the pixel metrics) and its count."""
    types = np.asarray(split.defect_types)
    good = split.labels == 0
    total = max(int(split.masks.sum()), 1)
    out = {}
    for t in sorted(set(types[~good])):
        mine = types == t
        sel = good | mine
        row = {"n": int(mine.sum()), "image_auroc": float(image_auroc(split.labels[sel], scores[sel]))}
        if split.has_masks and split.masks[mine].any():
            row["pixel_auroc"] = float(pixel_auroc(split.masks[mine], maps[mine]) if split.valid is None else
                                       pixel_metrics(split.masks[mine], maps[mine],
                                                     valid=split.valid[mine])["pixel_auroc"])
            row["defect_pixel_share"] = float(split.masks[mine].sum() / total)
        out[t] = row
    return out


def fit_calibration(model, val_images: np.ndarray | LoadedSplit, pre: Preprocess, device: str = "cpu",
                    quantile: float = THRESHOLD_QUANTILE) -> Calibration:
    """Threshold = the `quantile` of held-out normal scores; min/max/mean/std for score normalisation.

    val_images: uint8 (N, S, S, 3) squashed images, or a LoadedSplit (any resize mode: per-image scores as
    the device computes them, padding left out).
    """
    if len(val_images) == 0:
        return Calibration()
    if isinstance(val_images, LoadedSplit):
        maps, scores = predict_split(model, val_images, pre, device=device)
        if val_images.valid is not None:
            maps = maps[val_images.valid]
    else:
        maps, scores = predict_images(model, val_images, pre, device=device)
    return Calibration(
        threshold=float(np.quantile(scores, quantile)),
        score_mean=float(scores.mean()),
        score_std=float(scores.std()),
        score_min=float(maps.min()),
        score_max=float(scores.max()),
        quantile=quantile,
        n_images=int(len(scores)),
        extra={"pixel_threshold": float(np.quantile(maps, 0.999))},
    )
