"""How far each exported format is from the float torch model, on held-out test images (fidelity.json).

Per format and path (PaSTe: 'trunk+head', as a continual-learning device runs it, and 'full'; STFPM: 'full'):
image and pixel AUROC of the float model and of the format, their differences, the correlation of image
scores (Pearson and Spearman), the cosine similarity of anomaly maps per image, the trunk latent's error, and
the mean latency per image on this host. A format drifts when an AUROC falls by more than the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgead.data.loading import LoadedSplit
from edgead.engine.views import merge_views
from edgead.metrics import image_auroc, pixel_auroc
from edgead.options import option
from firmware_sim.anomaly_map import ScorePost
from firmware_sim.preprocess import Preprocess
from firmware_sim.runtime import DeployedDetector, Prediction


@dataclass(frozen=True)
class Tolerance:
    # The largest allowed drops; also options of `edgead export` and `Detector.export` (edgead.options).
    image_auroc: float = option(0.02, name="max_image_auroc_drop", min=0.0,
                                help="Largest image AUROC drop (vs the float model) a format may have.")
    pixel_auroc: float = option(0.01, name="max_pixel_auroc_drop", min=0.0,
                                help="Largest pixel AUROC drop (vs the float model) a format may have.")


@dataclass
class Reference:
    maps: np.ndarray
    scores: np.ndarray
    latents: np.ndarray | None  # (N, C, H, W) float; None for STFPM


def _rank(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x), np.float64)
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(axis=1) / np.maximum(den, 1e-300), 1.0)


def _aurocs(test: LoadedSplit, maps: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    img = float(image_auroc(test.labels, scores)) if len(np.unique(test.labels)) == 2 else None
    if not (test.has_masks and test.masks.any()):
        return img, None
    if test.valid is None:
        return img, float(pixel_auroc(test.masks, maps))
    # --resize pad / tile: only the pixels that show the image count, as in `edgead eval` (edgead.engine.evaluate)
    return img, float(pixel_auroc(test.masks[test.valid][None, None], maps[test.valid][None, None]))


def latent_error(z: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Relative L2 error, cosine and largest absolute error of the latent, per image then averaged."""
    d = (z - ref).reshape(len(z), -1).astype(np.float64)
    r = ref.reshape(len(ref), -1).astype(np.float64)
    rel = np.linalg.norm(d, axis=1) / np.maximum(np.linalg.norm(r, axis=1), 1e-12)
    return {"relative_l2_mean": float(rel.mean()), "relative_l2_max": float(rel.max()),
            "cosine_mean": float(row_cosines(z, ref).mean()), "max_abs_error": float(np.abs(d).max()),
            "reference_abs_max": float(np.abs(r).max())}


def compare(test: LoadedSplit, ref: Reference, pred: Prediction, tol: Tolerance,
            pre: Preprocess | None = None, post: ScorePost | str | None = None) -> dict:
    """pre: the run's preprocessing; with pad or tile the AUROCs are on per-image maps and scores (views merged
    as the device merges them, with the score post-processing ``post``), the map cosines and latents per view."""
    post = ScorePost.parse(post)
    per_image = (lambda m, s: (m, s)) if pre is None else (lambda m, s: merge_views(test, pre, m, s, post))  # noqa: E731
    ref_img, ref_pix = _aurocs(test, *per_image(ref.maps, ref.scores))
    img, pix = _aurocs(test, *per_image(pred.maps, pred.scores))
    cos = row_cosines(pred.maps, ref.maps)
    out = {
        "image_auroc": {"float": ref_img, "format": img, "delta": None if img is None else img - ref_img},
        "pixel_auroc": {"float": ref_pix, "format": pix, "delta": None if pix is None else pix - ref_pix},
        "score_pearson": _corr(pred.scores, ref.scores),
        "score_spearman": _corr(_rank(pred.scores), _rank(ref.scores)),
        "map_cosine_mean": float(cos.mean()),
        "map_cosine_min": float(cos.min()),
        "latent": (latent_error(pred.latents, ref.latents)
                   if pred.latents is not None and ref.latents is not None else None),
        "latency_ms_per_image": {k: round(v, 3) for k, v in pred.latency_ms.items()},
    }
    detail = []  # each AUROC that fell past its limit: the measured drop against the limit
    if img is not None and img - ref_img < -tol.image_auroc:
        detail.append({"metric": "image AUROC", "float": ref_img, "format": img, "drop": ref_img - img,
                       "limit": tol.image_auroc})
    if pix is not None and pix - ref_pix < -tol.pixel_auroc:
        detail.append({"metric": "pixel AUROC", "float": ref_pix, "format": pix, "drop": ref_pix - pix,
                       "limit": tol.pixel_auroc})
    drift = [f"{d['metric']} {d['float']:.4f} -> {d['format']:.4f} (drop {d['drop']:.4f}, limit {d['limit']:.4f})"
             for d in detail]
    out["drift"] = drift
    out["drift_detail"] = detail
    out["within_tolerance"] = not drift
    return out


def evaluate_format(detector: DeployedDetector, paths: list[str], test: LoadedSplit, ref: Reference,
                    tol: Tolerance, pre: Preprocess | None = None) -> dict[str, dict]:
    return {path: compare(test, ref, detector.predict(test.images, path), tol, pre, detector.post) for path in paths}
