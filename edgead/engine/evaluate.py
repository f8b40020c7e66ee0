"""Test-set evaluation with every metric, and deployment calibration on held-out normals."""

from __future__ import annotations

import numpy as np

from edgead.data.loading import LoadedSplit
from edgead.engine.selection import make_pseudo_defects
from edgead.engine.tensors import predict_images
from edgead.engine.thresholds import (
    DEFAULT_THRESHOLD_RULE,
    LEGACY_THRESHOLD_RULE,
    ThresholdRule,
    deployed_f1,
    far_achievable,
)
from edgead.engine.views import predict_split
from edgead.metrics import evaluate_all, image_auroc, image_f1_max, pixel_auroc, pixel_metrics
from edgead.models.teacher_student import Calibration
from firmware_sim.preprocess import Preprocess


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
        metrics["deployed_f1"] = deployed_f1(labels, scores, cal.threshold)
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
                    rule: str | ThresholdRule = DEFAULT_THRESHOLD_RULE, seed: int = 0) -> Calibration:
    """Threshold by `rule` from held-out normal scores; min/max/mean/std for score normalisation.

    val_images: uint8 (N, S, S, 3) squashed images, or a LoadedSplit (any resize mode: per-image scores as
    the device computes them, padding left out). ``quantile`` in the result is the rule's quantile, or for
    the other rules the share of these normals at or below the threshold; ``threshold_rule`` names
    the rule.
    """
    if len(val_images) == 0:
        return Calibration()
    rule = ThresholdRule.parse(rule)
    if isinstance(val_images, LoadedSplit):
        maps, scores = predict_split(model, val_images, pre, device=device)
        if val_images.valid is not None:
            maps = maps[val_images.valid]
        images = val_images.images
    else:
        maps, scores = predict_images(model, val_images, pre, device=device)
        images = val_images
    pseudo = None
    if rule.needs_pseudo:  # per image (or per tile): a tile's score is the max of its map, as an image's is
        pseudo = predict_images(model, make_pseudo_defects(images, seed)[0], pre, device=device)[1]
    threshold = rule.threshold(scores, pseudo)
    return Calibration(
        threshold=threshold,
        score_mean=float(scores.mean()),
        score_std=float(scores.std()),
        score_min=float(maps.min()),
        score_max=float(scores.max()),
        quantile=rule.value if rule.kind == "quantile" else float((scores <= threshold).mean()),
        n_images=int(len(scores)),
        # The legacy rule's threshold from the same scores: the deployed F1 before the rule was chosen can then
        # be measured on the very same model (edgead.cl.deployed, kind "before").
        pixel_threshold=float(np.quantile(maps, 0.999)), threshold_rule=str(rule),
        legacy_threshold=ThresholdRule.parse(LEGACY_THRESHOLD_RULE).threshold(scores),
        # far:A: the false-alarm rate these normals certify (A, or 1/(n+1) when they are too few)
        far_achievable=far_achievable(rule, len(scores)) if rule.kind == "far" else None,
    )
