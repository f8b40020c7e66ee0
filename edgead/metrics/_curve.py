"""The one sort-based core behind every ranking metric (see the package docstring for the method).

Data flow: scores are sorted once (descending); :func:`walk` then streams over the sorted data in
fixed-size chunks and, at the last element of every group of tied scores, emits the cumulative
number of positives (``tp``), negatives (``fp``) and, for AUPRO, the cumulative per-region overlap
weight (``pro``). Accumulators turn those curve points into AUROC / AP / F1-max and the PRO integral
without ever materialising the whole curve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from edgead.errors import EdgeadError

from ._checks import check_binary_values

CHUNK = 1 << 17  # elements streamed at a time: ~1 MiB per temporary array
_SIGN32 = np.uint32(0x80000000)
_LOW32 = np.uint64(0xFFFFFFFF)
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)  # 8-connectivity, as in the MVTec AD evaluation code

# fetch(a, b) -> (group keys, ids) for sorted positions [a, b); equal group keys = tied scores;
# id 0 = negative pixel/image, id > 0 = positive (for AUPRO: the 1-based index of its region).
Fetch = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


class BinaryStats:
    """AUROC (trapezoid), AP (sum of (R_n - R_{n-1}) P_n, as scikit-learn) and F1-max from one pass."""

    def __init__(self, n_pos: int, n_neg: int):
        self.n_pos, self.n_neg = n_pos, n_neg
        self.tp_prev = 0
        self.fp_prev = 0
        self.area2 = 0.0  # twice the ROC area, in units of (tp count x fp count)
        self.ap = 0.0  # sum of (tp_n - tp_{n-1}) * precision_n; divided by n_pos at the end
        self.f1 = 0.0
        self.done = False
        self.uses_pro = False

    def update(self, tp: np.ndarray, fp: np.ndarray, pro: np.ndarray | None) -> None:
        tp_prev = np.empty_like(tp)
        tp_prev[0] = self.tp_prev
        tp_prev[1:] = tp[:-1]
        fp_prev = np.empty_like(fp)
        fp_prev[0] = self.fp_prev
        fp_prev[1:] = fp[:-1]
        tpf = tp.astype(np.float64)
        self.area2 += float(np.dot((fp - fp_prev).astype(np.float64), tpf + tp_prev))
        predicted = tpf + fp  # >= 1 at every group end
        self.ap += float(np.dot((tp - tp_prev).astype(np.float64), tpf / predicted))
        self.f1 = max(self.f1, float(np.max(2.0 * tpf / (predicted + self.n_pos))))
        self.tp_prev = int(tp[-1])
        self.fp_prev = int(fp[-1])

    def result(self) -> dict[str, float]:
        return {
            "auroc": self.area2 / (2.0 * self.n_pos * self.n_neg),
            "ap": self.ap / self.n_pos,
            "f1": self.f1,
        }


class ProIntegral:
    """Integral of the PRO curve over FPR in [0, fpr_limit], linear interpolation at fpr_limit."""

    def __init__(self, n_background: int, fpr_limit: float):
        self.n_background = n_background
        self.limit = fpr_limit
        self.x_prev = 0.0
        self.y_prev = 0.0
        self.area = 0.0
        self.done = False
        self.uses_pro = True

    def update(self, tp: np.ndarray, fp: np.ndarray, pro: np.ndarray | None) -> None:
        if self.done:
            return
        assert pro is not None
        x = fp / self.n_background
        y = pro
        xp = np.empty_like(x)
        xp[0] = self.x_prev
        xp[1:] = x[:-1]
        yp = np.empty_like(y)
        yp[0] = self.y_prev
        yp[1:] = y[:-1]
        k = int(np.searchsorted(x, self.limit, side="right"))  # segments [0, k) end at or below the limit
        self.area += 0.5 * float(np.dot(x[:k] - xp[:k], y[:k] + yp[:k]))
        if k < x.size:  # segment k crosses the limit: cut it there
            x0, x1, y0, y1 = xp[k], x[k], yp[k], y[k]
            y_lim = y0 + (y1 - y0) * (self.limit - x0) / (x1 - x0)
            self.area += 0.5 * (self.limit - x0) * (y0 + y_lim)
            self.done = True
        else:
            self.x_prev, self.y_prev = float(x[-1]), float(y[-1])

    def result(self) -> float:
        return self.area / self.limit


def walk(
    n: int, fetch: Fetch, accumulators: Sequence, lut: np.ndarray | None = None, chunk: int | None = None
) -> None:
    """Stream over ``n`` sorted (descending) elements and feed curve points to ``accumulators``.

    A curve point is emitted at the last element of each tie group: (tp, fp[, pro]) = cumulative
    positives, negatives and (with ``lut``) the sum of ``lut[id]`` over all elements so far.
    """
    chunk = chunk or CHUNK  # read at call time, so tests can shrink it to exercise chunk boundaries
    tp_carry = 0
    pro_carry = 0.0
    for a in range(0, n, chunk):
        if all(acc.done for acc in accumulators):
            return
        b = min(a + chunk, n)
        m = b - a
        group, ids = fetch(a, min(b + 1, n))  # one element of look-ahead to close the last group
        ends = np.empty(m, dtype=bool)
        np.not_equal(group[: m - 1], group[1:m], out=ends[: m - 1])
        ends[m - 1] = True if b == n else bool(group[m - 1] != group[m])
        ids = ids[:m]
        idx = np.flatnonzero(ends)
        cum_tp = np.cumsum(ids != 0, dtype=np.int64)
        cum_tp += tp_carry
        tp = cum_tp[idx]
        fp = (idx + (a + 1)) - tp
        tp_carry = int(cum_tp[-1])
        del cum_tp
        pro = None
        if lut is not None and any(acc.uses_pro and not acc.done for acc in accumulators):
            cum_pro = np.cumsum(lut[ids])
            cum_pro += pro_carry
            pro = cum_pro[idx]
            pro_carry = float(cum_pro[-1])
            del cum_pro
        if idx.size == 0:  # the whole chunk lies inside one run of tied scores
            continue
        for acc in accumulators:
            if not acc.done:
                acc.update(tp, fp, pro)


def image_stats(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """AUROC / AP / F1-max for validated 1-D bool labels and float64 scores (full float64 precision)."""
    order = np.argsort(s, kind="stable")[::-1]
    s_desc = s[order]
    ids_desc = y[order].astype(np.uint8)

    def fetch(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        return s_desc[a:b], ids_desc[a:b]

    n_pos = int(np.count_nonzero(y))
    acc = BinaryStats(n_pos, y.size - n_pos)
    walk(y.size, fetch, [acc])
    return acc.result()


def _monotone_u32(scores: np.ndarray) -> np.ndarray:
    """Map float32 scores to uint32 keys with the same order (and equal keys exactly for equal scores)."""
    s = scores + np.float32(0.0)  # -0.0 -> +0.0, so that the two zeros share a key
    u = s.view(np.uint32)
    return np.where(u & _SIGN32, ~u, u | _SIGN32)


class PixelKeys:
    """All pixels packed into one uint64 array, sorted once: (float32 score order << 32) | id."""

    def __init__(self, masks: np.ndarray, maps: np.ndarray, regions: bool, valid: np.ndarray | None = None):
        # valid (N, H, W) bool: only these pixels count (e.g. not the letterbox padding); None: all of them.
        n, h, w = masks.shape
        hw = h * w
        if valid is not None and valid.shape != masks.shape:
            raise EdgeadError(f"valid has shape {valid.shape}: expected the masks' shape {masks.shape}")
        counts = np.full(n, hw) if valid is None else valid.reshape(n, -1).sum(axis=1)
        starts = np.concatenate([[0], np.cumsum(counts)])
        self.n = int(starts[-1])
        self.keys = np.empty(self.n, dtype=np.uint64)
        sizes: list[np.ndarray] = []
        n_regions = 0
        n_pos = 0
        for i in range(n):
            mask = masks[i]
            check_binary_values(mask, f"masks[{i}]")
            score = np.asarray(maps[i], dtype=np.float32)
            if np.isnan(score).any():
                r, c = np.argwhere(np.isnan(score))[0]
                raise EdgeadError(f"maps[{i}] contains NaN at pixel ({r}, {c}): expected numbers")
            sel = slice(None) if valid is None else valid[i].ravel()
            if valid is not None:
                mask = np.where(valid[i], mask, 0)  # a defect pixel outside the image cannot count
            dst = self.keys[starts[i] : starts[i + 1]]
            dst[:] = _monotone_u32(score.ravel()[sel])
            dst <<= np.uint64(32)
            if regions:
                lab, k = ndimage.label(mask != 0, structure=_STRUCTURE_8)
                if k:
                    sizes.append(np.bincount(lab.ravel(), minlength=k + 1)[1:])
                    lab = lab.ravel()[sel].astype(np.uint64)
                    lab[lab != 0] += np.uint64(n_regions)
                    dst |= lab
                    n_regions += k
                    n_pos += int(sizes[-1].sum())
            else:
                flat = (mask != 0).ravel()[sel]
                dst |= flat.astype(np.uint64)
                n_pos += int(np.count_nonzero(flat))
        self.n_pos = n_pos
        self.n_neg = self.n - n_pos
        self.n_regions = n_regions
        self.region_sizes = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
        self.keys.sort()  # in place: no index array, no second copy
        self._desc = self.keys[::-1]

    def fetch(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        k = self._desc[a:b]
        return k >> np.uint64(32), k & _LOW32

    def pro_lut(self) -> np.ndarray:
        """Weight of one pixel of each region: 1 / (num_regions * region_size); index 0 = background."""
        lut = np.zeros(self.n_regions + 1, dtype=np.float64)
        lut[1:] = 1.0 / (self.n_regions * self.region_sizes.astype(np.float64))
        return lut


def require_both_classes(keys: PixelKeys) -> None:
    if keys.n_pos == 0:
        raise EdgeadError("masks has no anomalous pixels: expected at least one 1 (defect) in some mask")
    if keys.n_neg == 0:
        raise EdgeadError("masks has no normal pixels: expected at least one 0 (defect-free) pixel")


def check_fpr_limit(fpr_limit: float) -> float:
    try:
        limit = float(fpr_limit)
    except (TypeError, ValueError) as exc:
        raise EdgeadError(f"fpr_limit is {fpr_limit!r}: expected a number in (0, 1]") from exc
    if not (0.0 < limit <= 1.0):
        raise EdgeadError(f"fpr_limit is {fpr_limit!r}: expected a number in (0, 1]")
    return limit
