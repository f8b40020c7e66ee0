"""Decision statistics and the few-label threshold, numpy only: one implementation for the device and the host.

A device calls an image anomalous when its score is above a threshold. At a threshold ``t``:

* false-alarm rate  the share of good parts above ``t`` (rejected),
* catch rate        the share of defective parts above ``t``,
* balanced accuracy their mean pass/catch: 0.5 * (catch rate + 1 - false-alarm rate). Unlike F1 it does not
                    depend on how many of the images are defective.

The **ceiling** of a labelled set is its best balanced accuracy over all thresholds: what a threshold chosen
with that very set's labels reaches. On a test set it is evaluation-only (no device knows the test labels); the
gap between it and the deployed balanced accuracy is what a better threshold could still win.

With a few labelled parts of a product (`edgead calibrate`, `python -m firmware_sim calibrate`) the threshold
is set by one of ``CALIBRATION_METHODS``:

* ``lognormal``  the balanced-accuracy-best cut when log scores of good and of defective parts are normal with
                 one shared spread: the midpoint of their mean log scores. The good parts' mean pools the
                 labelled good images with the held-out normals the product was calibrated on (their mean and
                 standard deviation, stored with the threshold: a log-normal fit by moments), so 1 defect and
                 no good image still give a threshold. A smooth estimate: a few images move it a little.
* ``best-cut``   the threshold with the best balanced accuracy on the labelled images themselves (the step
                 function), halfway between neighbouring scores; among equally good cuts the highest, which
                 rejects the fewest good parts. Exact on the images given, jumpy with few of them.

The default was chosen on DEV halves of six real categories (benchmarks/bench_decisions.py, docs/thresholds.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from firmware_sim.errors import UserError

CALIBRATION_METHODS = ("lognormal", "best-cut")
DEFAULT_CALIBRATION_METHOD = "lognormal"
_TINY = 1e-12  # scores are max-of-map distances (>= 0): the floor keeps log() finite for a score of 0


def _arr(x) -> np.ndarray:
    return np.asarray(x, np.float64).ravel()


def rates(normal_scores, defect_scores, threshold: float) -> dict:
    """False-alarm rate, catch rate and balanced accuracy at ``threshold`` (None where a class is empty)."""
    n, d = _arr(normal_scores), _arr(defect_scores)
    far = float((n > threshold).mean()) if n.size else None
    catch = float((d > threshold).mean()) if d.size else None
    bacc = 0.5 * (catch + 1 - far) if far is not None and catch is not None else None
    return {"false_alarm_rate": far, "catch_rate": catch, "balanced_accuracy": bacc}


def best_cut(normal_scores, defect_scores) -> tuple[float, float]:
    """(threshold, balanced accuracy): the best balanced accuracy over all thresholds, the cut halfway between
    neighbouring distinct scores; ties go to the highest threshold (fewest false alarms). Calling nothing
    anomalous (balanced accuracy 0.5) is one of the candidates. Needs both classes."""
    n, d = _arr(normal_scores), _arr(defect_scores)
    if n.size == 0 or d.size == 0:
        raise ValueError("best_cut needs good and defective scores")
    s = np.r_[n, d]
    y = np.r_[np.zeros(n.size, bool), np.ones(d.size, bool)]
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tpr, fpr = np.cumsum(y) / d.size, np.cumsum(~y) / n.size  # calling the top k+1 anomalous
    bacc = 0.5 * (tpr + 1 - fpr)
    cut = np.r_[s[:-1] > s[1:], True]  # a threshold cannot split equal scores
    bacc = np.where(cut, bacc, -1.0)
    k = int(np.argmax(bacc))  # first maximum: the highest threshold among ties
    if bacc[k] <= 0.5:  # nothing beats calling every part good
        return float(s[0]), 0.5
    thr = float(np.nextafter(s[k], -np.inf)) if k == len(s) - 1 else float(0.5 * (s[k] + s[k + 1]))
    return thr, float(bacc[k])


def ceiling(labels, scores) -> dict:
    """The best balanced accuracy over all thresholds on a labelled set and the threshold reaching it
    (evaluation only: it uses the labels). None values without both classes."""
    y, s = np.asarray(labels).ravel(), _arr(scores)
    if not (y == 1).any() or not (y == 0).any():
        return {"ceiling": None, "ceiling_threshold": None}
    thr, bacc = best_cut(s[y == 0], s[y == 1])
    return {"ceiling": bacc, "ceiling_threshold": thr}


@dataclass(frozen=True)
class NormalPrior:
    """What a stored calibration knows of the held-out normals behind it: mean, std and count of their scores."""

    mean: float
    std: float
    n: int

    @classmethod
    def from_calibration(cls, cal: dict) -> NormalPrior | None:
        """From a calibration record (score_mean, score_std, n_images); None when it lacks them."""
        try:
            mean, std, n = float(cal["score_mean"]), float(cal["score_std"]), int(cal["n_images"])
        except (KeyError, TypeError, ValueError):
            return None
        if not (math.isfinite(mean) and math.isfinite(std) and mean > 0 and std >= 0 and n > 0):
            return None
        return cls(mean, std, n)

    def log_mean(self) -> float:
        """The mean log score of a log-normal with this mean and std (moments): log m - log(1 + (s/m)^2) / 2."""
        return math.log(self.mean) - 0.5 * math.log1p((self.std / self.mean) ** 2)


def lognormal_cut(normal_scores, defect_scores, prior: NormalPrior | None = None) -> float | None:
    """The midpoint of the mean log scores of good parts (labelled ones pooled with ``prior``) and defective
    ones; None when there are no defects, no good-part information, or the defects do not score higher."""
    n, d = np.log(np.maximum(_arr(normal_scores), _TINY)), np.log(np.maximum(_arr(defect_scores), _TINY))
    total, count = float(n.sum()), n.size
    if prior is not None:
        total, count = total + prior.n * prior.log_mean(), count + prior.n
    if d.size == 0 or count == 0:
        return None
    mu_n, mu_d = total / count, float(d.mean())
    if mu_d <= mu_n:
        return None
    return float(math.exp(0.5 * (mu_n + mu_d)))


def choose_threshold(normal_scores, defect_scores, prior: NormalPrior | None = None,
                     method: str = DEFAULT_CALIBRATION_METHOD) -> dict:
    """The threshold from labelled scores by ``method`` and what it does on those images.

    Returns {threshold, method (the one used), note (why another was used, or None), n_normal, n_defect,
    false_alarm_rate, catch_rate, balanced_accuracy (on the labelled images), ceiling (their best)}.
    ``lognormal`` falls back to ``best-cut`` when the defects do not score higher than the good parts on
    average (the note says so). Raises UserError without defects or without good-part information.
    """
    if method not in CALIBRATION_METHODS:
        raise UserError(f"calibration method {method!r}: expected one of {', '.join(CALIBRATION_METHODS)}")
    n, d = _arr(normal_scores), _arr(defect_scores)
    if d.size == 0:
        raise UserError("calibration needs at least one defective image")
    if n.size == 0 and (method == "best-cut" or prior is None):
        raise UserError("calibration needs at least one good image (or, for lognormal, a stored calibration "
                        "with the held-out normals' score mean and std)")
    note, used, thr = None, method, None
    if method == "lognormal":
        thr = lognormal_cut(n, d, prior)
        if thr is None:
            if n.size == 0:
                raise UserError("the defective images do not score higher than the held-out normals on average: "
                                "no threshold separates them; give good images too (best-cut)")
            note, used = "the defective images do not score higher than the good ones on average: best-cut used", \
                "best-cut"
    if thr is None:
        thr = best_cut(n, d)[0]
    out = {"threshold": float(thr), "method": used, "note": note, "n_normal": int(n.size),
           "n_defect": int(d.size), **rates(n, d, thr)}
    out["ceiling"] = best_cut(n, d)[1] if n.size else None
    return out
