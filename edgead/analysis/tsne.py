"""t-SNE of the selected features: normal patches against anomalous patches, per category and level.

Normal patches are every position of the good test images; anomalous patches are the positions of the
defective test images whose area is at least `min_coverage` defect (from the ground-truth mask pooled
to the level's grid), so a patch labelled anomalous really shows the defect rather than a sliver of it.
Both are sampled, seeded, to at most `max_points` each. The features are the teacher's normalised
features restricted to the top p% channels, those chosen on the category's normal training images (the
same selection `analyze channels` reports). Besides the picture, the silhouette of the two groups in the
selected feature space (not in the 2-D embedding, which distorts distances) gives a number to compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgead.analysis.channels import (
    DEFAULT_MAX_PATCHES,
    DEFAULT_VARIANCE,
    category_importance,
    check_pca_options,
    top_channels,
)
from edgead.analysis.features import (
    check_percents,
    level_features,
    mask_coverage,
    patches,
    percent_key,
    sample_rows,
)
from edgead.data.loading import LoadedSplit
from edgead.data.stream import TaskStream
from edgead.errors import EdgeadError
from firmware_sim.atomic import atomic_write_json
from firmware_sim.preprocess import Preprocess

DEFAULT_MAX_POINTS = 400
DEFAULT_MIN_COVERAGE = 0.5
DEFAULT_PERPLEXITY = 30.0


def check_tsne_options(max_points: int, min_coverage: float, perplexity: float) -> None:
    if max_points < 2:
        raise EdgeadError(f"max points {max_points}: expected at least 2 patches per group")
    if not 0.0 < min_coverage <= 1.0:
        raise EdgeadError(f"minimum defect coverage {min_coverage}: expected a value in (0, 1]")
    if not perplexity > 0:
        raise EdgeadError(f"perplexity {perplexity}: expected a value > 0")


def labelled_patches(features: np.ndarray, split: LoadedSplit, *, max_points: int, min_coverage: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) from one level's test features (N, C, H, W): y = 0 normal patch, 1 anomalous patch."""
    check_tsne_options(max_points, min_coverage, DEFAULT_PERPLEXITY)
    n, c, h, w = features.shape
    x = patches(features)
    image_of_row = np.repeat(np.arange(n), h * w)
    normal = np.flatnonzero(split.labels[image_of_row] == 0)
    coverage = mask_coverage(split.masks, h, w).reshape(-1)
    anomalous = np.flatnonzero((split.labels[image_of_row] == 1) & (coverage >= min_coverage))
    normal = normal[sample_rows(len(normal), max_points, rng)]
    anomalous = anomalous[sample_rows(len(anomalous), max_points, rng)]
    rows = np.concatenate([normal, anomalous])
    y = np.concatenate([np.zeros(len(normal), np.int64), np.ones(len(anomalous), np.int64)])
    return x[rows], y


def embed_2d(x: np.ndarray, *, perplexity: float = DEFAULT_PERPLEXITY,
             seed: int = 0) -> tuple[np.ndarray, float]:
    """t-SNE to 2-D; returns the embedding and the perplexity used (capped below the point count)."""
    from sklearn.manifold import TSNE

    if len(x) < 4:
        raise EdgeadError(f"t-SNE needs at least 4 points; got {len(x)}")
    # t-SNE requires perplexity < n; a third of n keeps each point's neighbourhood well inside the sample.
    perp = float(min(perplexity, (len(x) - 1) / 3.0))
    # PCA initialisation is the stable choice, but needs 2 feature columns; one selected channel gets random.
    init = "pca" if x.shape[1] >= 2 else "random"
    emb = TSNE(n_components=2, perplexity=perp, init=init, random_state=seed, max_iter=1000).fit_transform(x)
    return emb.astype(np.float32), perp


def separation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Silhouette of the normal/anomalous grouping in feature space; None when a group is missing."""
    from sklearn.metrics import silhouette_score

    counts = np.bincount(y, minlength=2)
    if (counts < 2).any():
        return None
    return float(silhouette_score(x, y, metric="euclidean"))


def analyze_tsne(stream: TaskStream, model, pre: Preprocess, percents: list[float], out: str | Path, *,
                 max_points: int = DEFAULT_MAX_POINTS, min_coverage: float = DEFAULT_MIN_COVERAGE,
                 perplexity: float = DEFAULT_PERPLEXITY, variance: float = DEFAULT_VARIANCE,
                 max_patches: int = DEFAULT_MAX_PATCHES, val_fraction: float = 0.1, seed: int = 0,
                 device: str = "cpu", log=print) -> dict:
    """Writes OUT/tsne_<category>_p<p>.png (one panel per level) and OUT/tsne.json."""
    from edgead.analysis.plots import plot_tsne

    percents = check_percents(percents)
    check_pca_options(variance, max_patches)
    check_tsne_options(max_points, min_coverage, perplexity)
    out = Path(out)
    levels = list(model.config.levels)
    categories, figures = {}, {}
    for task in stream:
        log(f"t-SNE: {task.name}")
        d = task.load(pre, val_fraction=val_fraction, seed=seed)
        imps = category_importance(model, d.train.images, pre, variance=variance, max_patches=max_patches,
                                   seed=seed, device=device)
        test_feats = level_features(model, d.test.images, pre, device)
        per_p = {}
        for p in percents:
            panels = []
            for lv, imp, feats in zip(levels, imps, test_feats, strict=True):
                chans = top_channels(imp.importance, p)
                # Same seed for every p and level: the same patches are drawn, only the channels change.
                rng = np.random.default_rng(seed)
                x, y = labelled_patches(feats[:, chans], d.test, max_points=max_points,
                                        min_coverage=min_coverage, rng=rng)
                rec = {"level": int(lv), "channels": chans.tolist(), "n_normal": int((y == 0).sum()),
                       "n_anomalous": int((y == 1).sum()), "silhouette": separation(x, y),
                       "perplexity": None, "xy": [], "label": []}
                if len(x) >= 4:
                    emb, rec["perplexity"] = embed_2d(x, perplexity=perplexity, seed=seed)
                    rec["xy"] = np.round(emb, 4).tolist()
                    rec["label"] = y.tolist()
                panels.append(rec)
            key = percent_key(p)
            per_p[key] = {"levels": panels}
            figures[f"{task.name}/{key}"] = plot_tsne(task.name, p, panels,
                                                      out / f"tsne_{task.name}_p{key}.png").name
        categories[task.name] = per_p
    result = {
        "analysis": "tsne",
        "config": {"detector": model.config.to_dict(), "percents": percents, "max_points": max_points,
                   "min_coverage": min_coverage, "perplexity": perplexity, "variance": variance,
                   "max_patches": max_patches, "val_fraction": val_fraction, "seed": seed,
                   "selection": "top p% channels by PCA importance on the category's normal training images"},
        "tasks": stream.names,
        "categories": categories,
        "figures": figures,
    }
    atomic_write_json(out / "tsne.json", result)
    return result

