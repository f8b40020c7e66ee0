"""Threshold rules: how a deployment threshold is set from a task's held-out normal scores.

A device calls an image anomalous when its score is above the stored threshold, so the rule decides what a
factory sees (deployed F1, false alarms). No defective image of the product is known when the threshold is
set; a rule can only use the held-out normals and, for the ``pseudo-*`` rules, pseudo-defects pasted into
them (edgead.engine.selection). Rules, as text:

* ``quantile:Q``  the Q-quantile of the held-out normal scores (``quantile:0.99``: 1 % false alarms on them)
* ``sigma:K``     mean + K x std of the held-out normal scores (stable with few normals, unlike a high
                  quantile of 3 values, which is their maximum)
* ``pseudo-f1``   the threshold with the best F1 between held-out normals and their pseudo-defects
* ``far:A``       at most a fraction A of good parts rejected: the split-conformal order statistic of the
                  held-out normals (the ceil((n+1)(1-A))-th smallest of n scores). If the scores of new good
                  parts are exchangeable with the held-out ones, P(false alarm) <= A whatever their
                  distribution. n normals certify A >= 1/(n+1) only; below that the rule warns, uses their
                  maximum (which certifies 1/(n+1)) and records the achievable A (``far_achievable``).
* ``pseudo-band:Q,A``  the ``pseudo-f1`` cut kept inside a band of the held-out normal scores: not below their
                  Q-quantile (about 1-Q of good parts rejected at most) and not above the ``far:A`` cut (so
                  pseudo-defects that are far easier than real ones cannot push the threshold above the
                  faint real defects). Pseudo-defects alone put the cut at the 31st percentile of the normals
                  on one unseen product and far above the real defects on others; the band bounds both.
                  The upper end holds only where the held-out normals certify A (n >= 1/A - 1): the maximum
                  of 4 or 5 normals is no 10 % cut, it sits below the tail of the product's good parts (MPDD:
                  46 % false alarms when clipped to it, 18 % without), so below that count only the lower end
                  applies.

Which rule is the default was measured, on a DEV half of real test sets, never on the numbers reported:
benchmarks/bench_threshold.py, docs/thresholds.md.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from edgead.errors import EdgeadError

KINDS = ("quantile", "sigma", "pseudo-f1", "far", "pseudo-band")
# The default rule, chosen on DEV halves of the real categories' test sets by balanced accuracy, with a cap on
# false alarms and the worst category counted (benchmarks/bench_decisions.py, docs/thresholds.md).
DEFAULT_THRESHOLD_RULE = "pseudo-band:0.7,0.15"
# The rule of runs recorded before the rule was part of their configuration.
LEGACY_THRESHOLD_RULE = "quantile:0.99"
# Fewer held-out normals than this behind a threshold is warned about: its false-alarm rate is a guess.
FEW_NORMALS = 20


class ThresholdWarning(UserWarning):
    """A threshold that cannot deliver what was asked (too few held-out normals)."""


@dataclass(frozen=True)
class ThresholdRule:
    kind: str
    value: float | None = None
    upper: float | None = None  # pseudo-band only: A of its far:A upper end (value is its quantile Q)

    @classmethod
    def parse(cls, text: str | ThresholdRule) -> ThresholdRule:
        """'quantile:0.99' | 'sigma:2' | 'pseudo-f1' | 'far:0.05' -> a rule; a clear error for anything else."""
        if isinstance(text, ThresholdRule):
            return text
        kind, _, val = str(text).strip().partition(":")
        expected = ("expected quantile:Q (0 < Q <= 1), sigma:K (K >= 0), far:A (0 < A < 1), pseudo-f1 or "
                    "pseudo-band:Q,A (0 <= Q <= 1, 0 < A < 1)")
        if kind == "pseudo-f1" and not val:
            return cls(kind)
        if kind == "pseudo-band":
            q, _, a = val.partition(",")
            try:
                q, a = float(q), float(a)
            except ValueError:
                raise EdgeadError(f"threshold rule {text!r}: {expected}") from None
            if not (math.isfinite(q) and math.isfinite(a) and 0 <= q <= 1 and 0 < a < 1):
                raise EdgeadError(f"threshold rule {text!r}: {expected}")
            return cls(kind, q, a)
        if kind not in ("quantile", "sigma", "far") or not val:
            raise EdgeadError(f"threshold rule {text!r}: {expected}")
        try:
            v = float(val)
        except ValueError:
            raise EdgeadError(f"threshold rule {text!r}: {val!r} is not a number; {expected}") from None
        if (not math.isfinite(v) or (kind == "quantile" and not 0 < v <= 1) or (kind == "sigma" and v < 0)
                or (kind == "far" and not 0 < v < 1)):
            raise EdgeadError(f"threshold rule {text!r}: {expected}")
        return cls(kind, v)

    def __str__(self) -> str:
        if self.upper is not None:
            return f"{self.kind}:{self.value:g},{self.upper:g}"
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    @property
    def needs_pseudo(self) -> bool:
        return self.kind in ("pseudo-f1", "pseudo-band")

    def threshold(self, normal_scores: np.ndarray, pseudo_scores: np.ndarray | None = None) -> float:
        """The threshold for these held-out normal scores (nan when there are none)."""
        n = np.asarray(normal_scores, np.float64).ravel()
        if n.size == 0:
            return float("nan")
        if self.kind == "quantile":
            return float(np.quantile(n, self.value))
        if self.kind == "sigma":
            return float(n.mean() + self.value * n.std())
        if self.kind == "far":
            thr, achievable = conformal_far_threshold(n, self.value)
            if not _certifies(achievable, self.value):
                warnings.warn(f"threshold rule {self}: {n.size} held-out normals cannot certify a false-alarm rate of "
                              f"{self.value:g}; the smallest they certify is 1/(n+1) = {achievable:.3g} (their "
                              f"maximum is used). Hold out at least {far_normals_needed(self.value)} normals.",
                              ThresholdWarning, stacklevel=2)
            return thr
        if pseudo_scores is None or len(pseudo_scores) == 0:
            raise EdgeadError(f"threshold rule {self}: needs pseudo-defect scores")
        cut = best_f1_threshold(n, np.asarray(pseudo_scores, np.float64).ravel())
        if self.kind == "pseudo-band":
            hi, bound = conformal_far_threshold(n, self.upper)
            if not _certifies(bound, self.upper):  # too few normals: their maximum is not a far:A cut
                hi = float("inf")
            lo = min(float(np.quantile(n, self.value)), hi)
            cut = float(np.clip(cut, lo, hi))
        return cut


def _certifies(bound: float, alpha: float) -> bool:
    """Whether conformal_far_threshold's certified bound meets alpha (float noise: 1 - 19/20 is 0.05000000000000004)."""
    return bound <= alpha + 1e-12


def far_normals_needed(alpha: float) -> int:
    """The fewest held-out normals that certify a false-alarm rate ``alpha``: 1/(n+1) <= alpha."""
    return max(1, math.ceil(1 / alpha - 1 - 1e-9))


def conformal_far_threshold(normal_scores: np.ndarray, alpha: float) -> tuple[float, float]:
    """(threshold, certified false-alarm bound): the k-th smallest of the n held-out normal scores with
    k = ceil((n+1)(1-alpha)). For a new normal exchangeable with them P(score > threshold) <= 1 - k/(n+1) <=
    alpha (split conformal). When k > n no order statistic certifies alpha: the maximum (k = n), which certifies
    1/(n+1), and that bound. (nan, 1.0) without normals."""
    s = np.sort(np.asarray(normal_scores, np.float64).ravel())
    n = s.size
    if n == 0:
        return float("nan"), 1.0
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)  # the epsilon: (19+1)*0.95 is 19.000000000000004 in floats
    k = min(max(k, 1), n)
    return float(s[k - 1]), 1 - k / (n + 1)


def far_achievable(rule: ThresholdRule | str, n: int) -> float | None:
    """For a far:A rule, the false-alarm bound n held-out normals certify (A when n is enough); else None."""
    rule = ThresholdRule.parse(rule)
    if rule.kind != "far":
        return None
    return max(rule.value, 1 / (n + 1)) if n > 0 else 1.0


def best_f1_threshold(normal_scores: np.ndarray, anomalous_scores: np.ndarray) -> float:
    """The threshold (images scoring above it are anomalous) with the best F1 of the anomalous class; ties go
    to the highest threshold (fewest false alarms). Placed halfway between neighbouring scores."""
    s = np.r_[normal_scores, anomalous_scores]
    y = np.r_[np.zeros(len(normal_scores), bool), np.ones(len(anomalous_scores), bool)]
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)  # calling the top k+1 anomalous
    fp = np.cumsum(~y)
    f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp))
    # only cut between distinct scores: a threshold cannot split equal scores
    cut = np.r_[s[:-1] > s[1:], True]
    f1 = np.where(cut, f1, -1.0)
    k = int(np.argmax(f1))  # first maximum: the highest threshold among ties
    return float(s[k] - 1e-12) if k == len(s) - 1 else float(0.5 * (s[k] + s[k + 1]))


def deployed_f1(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float | None:
    """F1 of the anomalous class when images scoring above ``threshold`` are called anomalous (what a factory
    sees), not the best F1 over thresholds. None when undefined (no threshold, or nothing to count)."""
    if not math.isfinite(threshold):
        return None
    labels, scores = np.asarray(labels), np.asarray(scores)
    pred, pos = scores > threshold, labels == 1
    tp = float((pred & pos).sum())
    denom = 2 * tp + float((pred & ~pos).sum()) + float((~pred & pos).sum())
    return 2 * tp / denom if denom else None


def deployed_balanced_accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float | None:
    """Mean of the defect catch rate and the good-part pass rate at ``threshold``: unlike F1 it does not reward
    flagging everything on a test set that is mostly defective. None without a threshold or without both
    classes."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if not math.isfinite(threshold) or not (labels == 1).any() or not (labels == 0).any():
        return None
    pred = scores > threshold
    return float(0.5 * (pred[labels == 1].mean() + (~pred[labels == 0]).mean()))
