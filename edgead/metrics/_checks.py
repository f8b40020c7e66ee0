"""Input checks shared by the metric functions: each failure names the argument and what is expected."""

from __future__ import annotations

import numpy as np

from edgead.errors import EdgeadError


def _real_array(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise EdgeadError(f"{name} could not be read as an array ({exc}): expected a numeric array") from exc
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise EdgeadError(f"{name} has dtype {arr.dtype}: expected real numbers (bool, integer or float)")
    return arr


def check_binary_values(arr: np.ndarray, name: str) -> None:
    """Raise unless ``arr`` is bool or holds only 0 and 1."""
    if arr.dtype == np.bool_:
        return
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        example = arr[bad].flat[0].item()
        raise EdgeadError(
            f"{name} contains {example!r}: expected only 0 (normal) and 1 (anomalous) or bool "
            f"(for 0/255 masks pass `masks > 0`)"
        )


def image_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate image-level ground truth and scores; return (bool labels, float64 scores), both 1-D."""
    y = _real_array(labels, "labels")
    s = _real_array(scores, "scores")
    if y.ndim != 1:
        raise EdgeadError(f"labels has shape {y.shape}: expected a 1-D array of shape (N,)")
    if s.ndim != 1:
        raise EdgeadError(f"scores has shape {s.shape}: expected a 1-D array of shape (N,)")
    if y.shape != s.shape:
        raise EdgeadError(
            f"labels has {y.shape[0]} entries but scores has {s.shape[0]}: expected one score per image"
        )
    if y.size == 0:
        raise EdgeadError("labels and scores are empty: expected at least one normal and one anomalous image")
    check_binary_values(y, "labels")
    s = s.astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise EdgeadError(
            f"scores contains NaN at index {int(np.flatnonzero(np.isnan(s))[0])}: expected numbers"
        )
    y = y.astype(bool, copy=False)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        only = "anomalous (1)" if n_pos else "normal (0)"
        raise EdgeadError(
            f"labels contains only {only} images: expected both normal (0) and anomalous (1) images"
        )
    return y, s


def pixel_inputs(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and dtypes of (N, H, W) masks and maps. Values are checked image by image later."""
    m = _real_array(masks, "masks")
    a = _real_array(maps, "maps")
    if m.ndim != 3:
        raise EdgeadError(f"masks has shape {m.shape}: expected (N, H, W)")
    if a.ndim != 3:
        raise EdgeadError(f"maps has shape {a.shape}: expected (N, H, W)")
    if m.shape != a.shape:
        raise EdgeadError(
            f"maps has shape {a.shape} but masks has shape {m.shape}: expected the same (N, H, W)"
        )
    if m.size == 0:
        raise EdgeadError(f"masks and maps are empty (shape {m.shape}): expected at least one pixel")
    return m, a
