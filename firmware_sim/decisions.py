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

* ``anchored``   (default) the product's deployed threshold (the one its held-out normals set, stored with the
                 calibration), moved toward the ``lognormal`` cut only as far as the k labelled defects support:
                 in log score ``log t = log t_deployed + w * (log t_lognormal - log t_deployed)``, with
                 ``w = k / (k + k0)``, ``k0 = ANCHOR_DEFECTS`` (2). It is the lognormal cut with the deployed
                 threshold counted as k0 pseudo-defects, placed where that threshold is their midpoint with the
                 good parts. Why: the deployed threshold already sits close to the best cut on most products
                 (on the six real categories its REPORT gap to the ceiling is about 0.02 without any label),
                 while the mean log score of a few defects is noisy (one faint or one glaring defect moves the
                 lognormal cut a long way): used alone, 1 labelled defect made the threshold worse than none. A
                 few defects move it a little, many move it to the lognormal cut. Optionally (``z``,
                 ``ANCHOR_DEAD_ZONE``, 0 by default) a difference within z standard errors of the lognormal cut
                 (``sd / (2 sqrt(k))``, ``sd`` the held-out normals' log-score spread) keeps the deployed
                 threshold and only the excess moves it. The anchor is the threshold set without labels, also
                 after an earlier calibration, so the same images always give the same threshold.
* ``lognormal``  the balanced-accuracy-best cut when log scores of good and of defective parts are normal with
                 one shared spread: the midpoint of their mean log scores. The good parts' mean pools the
                 labelled good images with the held-out normals the product was calibrated on (their mean and
                 standard deviation, stored with the threshold: a log-normal fit by moments), so 1 defect and
                 no good image still give a threshold. A smooth estimate: a few images move it a little.
* ``best-cut``   the threshold with the best balanced accuracy on the labelled images themselves (the step
                 function), halfway between neighbouring scores; among equally good cuts the highest, which
                 rejects the fewest good parts. Exact on the images given, jumpy with few of them.

Before ``anchored`` or ``lognormal`` use the stored statistics, the labelled good images check them (the drift
check, ``drift_rescaled``): after later tasks have trained the model on, a product's scores can sit several times
above or below the held-out normals it was calibrated on (in the five-product stream up to 6x, with every good
part above its threshold). When the good images' geometric mean differs from the stored one by at least
``DRIFT_MIN_RATIO`` and by more than ``DRIFT_Z`` standard errors, the statistics are rescaled by that ratio
and ``anchored`` uses ``lognormal`` (a threshold the product drifted away from is no anchor); the result
records the ratio (``drift_ratio``, 1 when the check did not fire) and the note says so.

The default, ``z``, ``k0`` and ``DRIFT_Z`` were chosen on DEV halves (benchmarks/bench_decisions.py, which also
scores ``anchored`` with other z and k0 and the drift check at other z; docs/thresholds.md): the first three on
six real categories trained one at a time, ``DRIFT_Z`` on those and on the five-product stream together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from firmware_sim.errors import UserError

CALIBRATION_METHODS = ("anchored", "lognormal", "best-cut")
# What a labelled calibration records of choose_threshold's result (manifest, checkpoint, results.json)
LABELLED_KEYS = ("method", "note", "n_normal", "n_defect", "false_alarm_rate", "catch_rate", "balanced_accuracy",
                 "ceiling", "drift_ratio")
DEFAULT_CALIBRATION_METHOD = "anchored"
# anchored, both chosen on DEV halves (benchmarks/bench_decisions.py scores z in 0-2 x k0 in 0-2): on the mean
# DEV objective of four score files (threshold_real6: max scores, older recipe, 2 seeds; and the default recipe's
# seed 0 with topk:0.01, max and blur+topk scores) z = 0, k0 = 2 was best (0.0524; z 0.5 k0 1: 0.0527; z 1.5 k0
# 0.5, the best on threshold_real6 alone: 0.0561). A dead zone (z > 0) keeps the deployed threshold for
# differences within z standard errors of the lognormal cut; it helped on one file and not on the others ...
ANCHOR_DEAD_ZONE = 0.0
# ... and the difference (beyond the dead zone) moves it with weight k / (k + k0): the deployed threshold counts
# as k0 labelled defects placed where it is their midpoint with the good parts
ANCHOR_DEFECTS = 2.0
# Drift check of the labelled good images (anchored and lognormal): when their mean log score differs from the
# stored held-out normals' by more than DRIFT_Z standard errors, the product's scores have moved since it was
# calibrated (later tasks trained the model on; the line changed) and the stored statistics and deployed
# threshold are rescaled by that ratio before use: the labelled good parts are the anchors. inf: never. Chosen on
# DEV of the six single-task categories and the five-product stream together (bench_decisions.py --stream): z 3
# 0.188, z 4 and z 1 0.189, z 2 0.190, never 0.282 (single-task alone prefers never, 0.052 vs 0.061 at z 3).
DRIFT_Z = 3.0
# ... and only a move by at least this factor (either way): a smaller one is left to anchored's weighting, and a
# tight spread of the stored scores must not turn a few per cent into "drift"
DRIFT_MIN_RATIO = 1.5
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
    """What a stored calibration knows of the held-out normals behind it: mean, std and count of their scores,
    and the threshold set from them without labels (``anchored``'s anchor; None where unknown)."""

    mean: float
    std: float
    n: int
    threshold: float | None = None

    @classmethod
    def from_calibration(cls, cal: dict) -> NormalPrior | None:
        """From a calibration record (score_mean, score_std, n_images, threshold: a manifest's calibration or a
        host Calibration's asdict); None when it lacks the statistics."""
        try:
            mean, std, n = float(cal["score_mean"]), float(cal["score_std"]), int(cal["n_images"])
        except (KeyError, TypeError, ValueError):
            return None
        if not (math.isfinite(mean) and math.isfinite(std) and mean > 0 and std >= 0 and n > 0):
            return None
        return cls(mean, std, n, unlabelled_threshold(cal))

    def log_std(self) -> float:
        """The log-score spread of a log-normal with this mean and std (moments): sqrt(log(1 + (s/m)^2))."""
        return math.sqrt(math.log1p((self.std / self.mean) ** 2))

    def log_mean(self) -> float:
        """The mean log score of a log-normal with this mean and std (moments): log m - log(1 + (s/m)^2) / 2."""
        return math.log(self.mean) - 0.5 * math.log1p((self.std / self.mean) ** 2)


def _finite_positive(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def unlabelled_threshold(cal: dict) -> float | None:
    """The threshold a calibration record had before any labelled calibration replaced it: its own when it
    was not set from labels, else the latest one in its history that was not (None when none is known).

    Anchoring on it, not on the current threshold, keeps calibrating idempotent: calibrating twice with the
    same images gives the same threshold instead of drifting further from the deployed one each time. A host
    calibration (`edgead calibrate`) keeps ``labelled``/``history`` under ``extra`` (and an export carries them
    there); a device one (`firmware_sim calibrate`) at the top level. When both are present the host's history
    is the older one and holds the threshold set without labels.
    """
    extra = cal.get("extra") if isinstance(cal.get("extra"), dict) else {}
    for where in (extra, cal):
        if where.get("labelled"):
            for old in reversed(list(where.get("history") or [])):
                if isinstance(old, dict) and not old.get("labelled"):
                    return _finite_positive(old.get("threshold"))
            return None
    return _finite_positive(cal.get("threshold"))


def good_log_ratio(normal_scores, prior: NormalPrior) -> float:
    """log of (geometric mean of these good parts' scores) / (that of the held-out normals behind ``prior``, a
    log-normal fit of their stored mean and std): how far the product's scores moved since calibration."""
    return float(np.log(np.maximum(_arr(normal_scores), _TINY)).mean()) - prior.log_mean()


def drift_rescaled(normal_scores, prior: NormalPrior | None, z: float = DRIFT_Z) -> tuple[NormalPrior | None, float]:
    """(prior, ratio): ``prior`` rescaled by the ratio of the labelled good images' geometric mean score to its
    own when the two differ by more than ``z`` standard errors of their mean log scores and by at least
    DRIFT_MIN_RATIO, else as given (ratio 1). Needs a prior with a spread and at least one labelled good image."""
    m = _arr(normal_scores).size
    if prior is None or m == 0 or not math.isfinite(z):
        return prior, 1.0
    spread = prior.log_std()
    delta = good_log_ratio(normal_scores, prior)
    if (spread <= 0 or abs(delta) <= z * spread * math.sqrt(1 / m + 1 / prior.n)
            or abs(delta) < math.log(DRIFT_MIN_RATIO)):
        return prior, 1.0
    r = math.exp(delta)
    thr = None if prior.threshold is None else prior.threshold * r
    return NormalPrior(prior.mean * r, prior.std * r, prior.n, thr), r


def anchored_cut(labelled_cut: float, anchor: float, n_defect: int, log_spread: float,
                 z: float = ANCHOR_DEAD_ZONE, k0: float = ANCHOR_DEFECTS) -> float:
    """``anchor`` moved toward ``labelled_cut`` in log score by the part of their difference beyond ``z``
    standard errors of the cut (``log_spread / (2 sqrt(n_defect))``: half the standard error of the defects'
    mean log score, the cut being a midpoint), weighted n_defect / (n_defect + k0)."""
    delta = math.log(max(labelled_cut, _TINY)) - math.log(max(anchor, _TINY))
    excess = max(0.0, abs(delta) - z * log_spread / (2 * math.sqrt(n_defect)))
    return float(anchor * math.exp(math.copysign(excess, delta) * n_defect / (n_defect + k0)))


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
                     method: str = DEFAULT_CALIBRATION_METHOD, z: float = ANCHOR_DEAD_ZONE,
                     k0: float = ANCHOR_DEFECTS, drift_z: float = DRIFT_Z) -> dict:
    """The threshold from labelled scores by ``method`` and what it does on those images.

    Returns {threshold, method (the one used), note (why another was used, or None), n_normal, n_defect,
    false_alarm_rate, catch_rate, balanced_accuracy (on the labelled images), ceiling (their best),
    anchor_threshold and labelled_cut (``anchored``: the deployed threshold and the cut it moved toward; else
    None)}. ``z`` and ``k0``: ``anchored``'s dead zone and weight (the defaults were chosen on DEV).
    ``lognormal`` falls back to ``best-cut`` when the defects do not score higher than the good parts on
    average (the note says so); ``anchored`` then moves toward the best cut instead, and without a stored
    threshold to anchor on (``prior`` None or without one) it is plain ``lognormal`` (the note says so).
    Raises UserError without defects or without good-part information.
    """
    if method not in CALIBRATION_METHODS:
        raise UserError(f"calibration method {method!r}: expected one of {', '.join(CALIBRATION_METHODS)}")
    n, d = _arr(normal_scores), _arr(defect_scores)
    if d.size == 0:
        raise UserError("calibration needs at least one defective image")
    if n.size == 0 and (method == "best-cut" or prior is None):
        raise UserError("calibration needs at least one good image (or, for anchored and lognormal, a stored "
                        "calibration with the held-out normals' score mean and std)")
    note, used, thr, anchor, cut = None, method, None, None, None
    ratio = 1.0
    if method != "best-cut":
        prior, ratio = drift_rescaled(n, prior, drift_z)
        if ratio != 1.0:
            note = (f"the labelled good images score {ratio:.3g}x the stored held-out normals (drift beyond "
                    f"{drift_z:g} standard errors): their statistics were rescaled")
            if method == "anchored":  # a threshold the product has drifted away from is no anchor
                note, used = f"{note}, and lognormal used (the deployed threshold is stale)", "lognormal"
    if used == "anchored":
        anchor = prior.threshold if prior is not None else None
        if anchor is None:  # e.g. only labelled good images, no stored calibration: nothing to anchor on
            note = (f"{note}; " if note else "") + "no stored threshold set without labels to anchor on: lognormal used"
            used = "lognormal"
    if used in ("anchored", "lognormal"):
        thr = lognormal_cut(n, d, prior)
        if thr is None:
            if n.size == 0:
                raise UserError("the defective images do not score higher than the held-out normals on average: "
                                "no threshold separates them; give good images too (best-cut)")
            why = "the defective images do not score higher than the good ones on average"
            if used == "lognormal":
                note, used = (f"{note}; " if note else "") + f"{why}: best-cut used", "best-cut"
            else:
                note = (f"{note}; " if note else "") + f"{why}: moved toward the best cut"
                thr = best_cut(n, d)[0]
    if thr is None:
        thr = best_cut(n, d)[0]
    if used == "anchored":
        cut = float(thr)
        thr = anchored_cut(cut, anchor, d.size, prior.log_std(), z, k0)
    out = {"threshold": float(thr), "method": used, "note": note, "n_normal": int(n.size),
           "n_defect": int(d.size), **rates(n, d, thr)}
    out["ceiling"] = best_cut(n, d)[1] if n.size else None
    out.update(anchor_threshold=anchor, labelled_cut=cut, drift_ratio=ratio)
    return out
