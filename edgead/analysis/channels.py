"""Channel importance of each feature level by PCA over normal training patches, and the top p% channels.

Importance of channel c at a level: sum over the kept principal components k of
explained_variance_ratio_k * loading_{k,c}^2, normalised to sum to 1. Why this form: loading_{k,c}^2 is
the share of component k's unit direction that lies on channel c, and weighting it by the variance the
component explains counts how much of the normal data's variance channel c carries. Kept over *all*
components the sum is exactly channel c's share of the total variance (the covariance diagonal is
sum_k lambda_k V_kc^2), so PCA would add nothing; keeping only the leading components that explain
`variance` of the total is what makes it PCA: a channel scores high when it takes part in the dominant,
shared directions of normal appearance, and variance that lives only in the many small trailing
components (channel-specific noise) is not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgead.analysis.features import (
    check_percents,
    level_features,
    patches,
    percent_key,
    sample_rows,
)
from edgead.data.stream import TaskStream
from edgead.errors import EdgeadError
from firmware_sim.atomic import atomic_write_json
from firmware_sim.preprocess import Preprocess

DEFAULT_VARIANCE = 0.95
DEFAULT_MAX_PATCHES = 20_000


@dataclass
class ChannelImportance:
    importance: np.ndarray  # (C,) float64, non-negative, sums to 1
    explained_variance_ratio: np.ndarray  # of the kept components, largest first
    n_patches: int

    @property
    def n_components(self) -> int:
        return len(self.explained_variance_ratio)

    @property
    def ranking(self) -> np.ndarray:
        """Channel indices from most to least important (ties: lower index first)."""
        return np.argsort(-self.importance, kind="stable")


def check_pca_options(variance: float, max_patches: int) -> None:
    """Checked before any data or model loads, so a typo fails at once."""
    if not 0.0 < variance <= 1.0:
        raise EdgeadError(f"explained-variance fraction {variance}: expected a value in (0, 1]")
    if max_patches < 2:
        raise EdgeadError(f"max patches {max_patches}: expected at least 2")


def pca_channel_importance(x: np.ndarray, variance: float = DEFAULT_VARIANCE) -> ChannelImportance:
    """Importance of the C columns of x (P patches, C channels); see the module docstring."""
    from sklearn.decomposition import PCA

    check_pca_options(variance, 2)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise EdgeadError(f"PCA needs at least 2 patches of at least 1 channel; got an array of shape "
                          f"{x.shape}")
    if not np.isfinite(x).all():
        raise EdgeadError("features contain NaN or infinite values")
    if float(x.var(axis=0).sum()) == 0.0:
        raise EdgeadError(f"all {x.shape[0]} patches have the same features: no variance to rank channels by")
    # svd_solver="full" makes the result deterministic (no randomised SVD) and honours a float n_components.
    pca = PCA(n_components=None if variance >= 1.0 else variance, svd_solver="full").fit(x)
    evr = pca.explained_variance_ratio_
    raw = (evr[:, None] * pca.components_ ** 2).sum(axis=0)
    return ChannelImportance(raw / raw.sum(), evr.copy(), int(x.shape[0]))


def n_selected(n_channels: int, percent: float) -> int:
    """How many channels the top `percent`% keeps: rounded up, at least one."""
    check_percents([percent])
    # The small epsilon keeps 10% of 40 at 4 when percent/100*C lands a hair above an integer.
    return max(1, min(n_channels, math.ceil(percent / 100.0 * n_channels - 1e-9)))


def top_channels(importance: np.ndarray, percent: float) -> np.ndarray:
    """Indices of the top `percent`% channels, most important first."""
    imp = np.asarray(importance)
    return np.argsort(-imp, kind="stable")[: n_selected(len(imp), percent)]


def category_importance(model, images: np.ndarray, pre: Preprocess, *, variance: float = DEFAULT_VARIANCE,
                        max_patches: int = DEFAULT_MAX_PATCHES, seed: int = 0,
                        device: str = "cpu") -> list[ChannelImportance]:
    """Per detector level, the importance of its channels over patches of the given normal images."""
    check_pca_options(variance, max_patches)
    rng = np.random.default_rng(seed)
    out = []
    for feats in level_features(model, images, pre, device):
        x = patches(feats)
        out.append(pca_channel_importance(x[sample_rows(len(x), max_patches, rng)], variance))
    return out


def importance_record(level: int, imp: ChannelImportance, percents: list[float]) -> dict:
    """The numbers behind one level's plot, as JSON-ready values."""
    selected = {percent_key(p): top_channels(imp.importance, p).tolist() for p in percents}
    return {
        "level": level,
        "channels": len(imp.importance),
        "n_patches": imp.n_patches,
        "n_components": imp.n_components,
        "explained_variance_ratio": imp.explained_variance_ratio.tolist(),
        "importance": imp.importance.tolist(),
        "ranking": imp.ranking.tolist(),
        "selected": selected,
        # The share of the total importance the selection keeps: how concentrated the level is.
        "importance_captured": {k: float(imp.importance[v].sum()) for k, v in selected.items()},
    }


def analyze_channels(stream: TaskStream, model, pre: Preprocess, percents: list[float], out: str | Path, *,
                     variance: float = DEFAULT_VARIANCE, max_patches: int = DEFAULT_MAX_PATCHES,
                     val_fraction: float = 0.1, seed: int = 0, device: str = "cpu", log=print) -> dict:
    """Per category: PCA importance of every level's channels on its normal training images (the held-out
    validation images excluded, as in training). Writes OUT/channels_<category>.png and OUT/channels.json."""
    from edgead.analysis.plots import plot_channel_importance

    percents = check_percents(percents)
    check_pca_options(variance, max_patches)
    out = Path(out)
    levels = list(model.config.levels)
    categories, figures = {}, {}
    for task in stream:
        log(f"channels: {task.name}")
        normals = task.load(pre, val_fraction=val_fraction, seed=seed).train
        imps = category_importance(model, normals.images, pre, variance=variance, max_patches=max_patches,
                                   seed=seed, device=device)
        recs = [importance_record(lv, imp, percents) for lv, imp in zip(levels, imps, strict=True)]
        categories[task.name] = {"n_images": len(normals), "levels": recs}
        figures[task.name] = plot_channel_importance(task.name, recs, percents,
                                                     out / f"channels_{task.name}.png").name
    result = {
        "analysis": "channels",
        "config": {"detector": model.config.to_dict(), "percents": percents, "variance": variance,
                   "max_patches": max_patches, "val_fraction": val_fraction, "seed": seed,
                   "features": "teacher features, L2-normalised over each level's channels"},
        "tasks": stream.names,
        "categories": categories,
        "figures": figures,
    }
    atomic_write_json(out / "channels.json", result)
    return result
