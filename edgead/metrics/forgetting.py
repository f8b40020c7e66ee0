"""Average forgetting over a continual-learning accuracy matrix (CLAD relative form, or absolute).

``matrix[i][j]`` is a metric (higher = better) on task j after training task i (0-based), shape
(T, T). Only the lower triangle (i >= j) is read; entries above the diagonal may be NaN. For every
task j < T-1 the forgetting is taken against the rows in which task j had already been learned and
that precede the final one, l in [j, T-2]:

* relative (CLAD): f_j = max_l (1 - m[T-1][j] / m[l][j])
* absolute:        f_j = max_l (m[l][j] - m[T-1][j])

and F = mean_j f_j over j < T-1 (F = 0.0 for T = 1; the last task cannot have been forgotten yet).
Relative form, division by zero: rows l with m[l][j] == 0 are skipped (nothing was known, so
nothing can be lost relative to them); if every such row is 0, f_j = 0.0. Values can be negative:
then the final model is better on task j than at every earlier point (positive backward transfer).
"""

from __future__ import annotations

import numpy as np

from edgead.errors import EdgeadError

MODES = ("relative", "absolute")


def _check(matrix, mode: str) -> np.ndarray:
    if mode not in MODES:
        raise EdgeadError(f"mode is {mode!r}: expected one of {', '.join(MODES)}")
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EdgeadError(f"matrix could not be read as numbers ({exc}): expected a (T, T) array") from exc
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise EdgeadError(
            f"matrix has shape {m.shape}: expected a square (T, T) array, m[i][j] = task j after task i"
        )
    if m.shape[0] == 0:
        raise EdgeadError("matrix is empty: expected a (T, T) array with T >= 1")
    rows, cols = np.tril_indices(m.shape[0])
    bad = ~np.isfinite(m[rows, cols])
    if bad.any():
        i, j = int(rows[bad][0]), int(cols[bad][0])
        raise EdgeadError(
            f"matrix[{i}][{j}] is {m[i, j]}: expected finite numbers on and below the diagonal (i >= j)"
        )
    return m


def forgetting_per_task(matrix, mode: str = "relative") -> np.ndarray:
    """Forgetting of each task j < T-1 (float64 array of length T-1; see the module docstring)."""
    m = _check(matrix, mode)
    t = m.shape[0]
    out = np.zeros(max(t - 1, 0), dtype=np.float64)
    final = m[t - 1]
    for j in range(t - 1):
        past = m[j : t - 1, j]
        if mode == "absolute":
            out[j] = np.max(past) - final[j]
        else:
            known = past[past != 0]
            out[j] = np.max(1.0 - final[j] / known) if known.size else 0.0
    return out


def forgetting(matrix, mode: str = "relative") -> float:
    """Average forgetting over tasks j < T-1 (0.0 when T == 1); ``mode`` is "relative" or "absolute"."""
    per_task = forgetting_per_task(matrix, mode)
    return float(per_task.mean()) if per_task.size else 0.0
