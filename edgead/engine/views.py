"""Per-image maps and scores from a split's views, whatever the resize mode (squash, pad, tile).

The model sees views (S x S); an image's map in its frame and its score come from
`firmware_sim.preprocess.Preprocess.merge`, the same function the device uses, so host and device agree.
"""

from __future__ import annotations

import numpy as np

from edgead.data.loading import LoadedSplit
from edgead.engine.tensors import predict_images
from firmware_sim.anomaly_map import ScorePost
from firmware_sim.preprocess import Preprocess


def merge_views(split: LoadedSplit, pre: Preprocess, maps: np.ndarray, scores: np.ndarray,
                post: ScorePost | None = None) -> tuple[np.ndarray, np.ndarray]:
    """View maps (M, S, S) and scores (M,) -> per-image frame maps (N, S, S) and scores (N,); ``post``: the
    model's score post-processing (the views' maps already went through it; its reduction scores the image)."""
    if pre.resize_mode == "squash":
        return maps, scores
    owner = split.view_owner()
    lo, hi = np.searchsorted(owner, np.arange(len(split))), np.searchsorted(owner, np.arange(1, len(split) + 1))
    out_maps = np.empty((len(split), *maps.shape[1:]), np.float32)
    out_scores = np.empty(len(split), np.float32)
    for i in range(len(split)):
        out_maps[i], out_scores[i] = pre.merge(maps[lo[i]:hi[i]], tuple(int(v) for v in split.sizes[i]), post)
    return out_maps, out_scores


def predict_split(model, split: LoadedSplit, pre: Preprocess, device: str = "cpu"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps in each image's frame (N, S, S) float32 and image scores (N,) for a loaded split."""
    maps, scores = predict_images(model, split.images, pre, device=device)
    return merge_views(split, pre, maps, scores, ScorePost.parse(model.config.score))
