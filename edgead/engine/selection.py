"""Model selection without the test set: pseudo-defects pasted into held-out normal images.

The mean anomaly score of validation normals falls every epoch and so selects nothing (docs/model-selection.md). Instead each held-out normal gets pseudo-anomalous copies — a patch cut from another normal
image and pasted elsewhere (flipped), and a translucent coloured stain — whose masks are exactly the
changed pixels. Image and pixel AUROC on this set track detection quality and never touch test data.
"""

from __future__ import annotations

import numpy as np

from edgead.metrics import image_auroc, pixel_auroc


def _ellipse(h: int, w: int, rng: np.random.Generator, rmin: float, rmax: float) -> np.ndarray:
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(rmin, rmax) * h, rng.uniform(rmin, rmax) * w
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_pseudo_defects(normals: np.ndarray, seed: int, per_image: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 normals -> (N*per_image, S, S, 3) pseudo-anomalies and their bool masks."""
    rng = np.random.default_rng(seed)
    n, h, w, _ = normals.shape
    out = np.repeat(normals, per_image, axis=0).copy()
    masks = np.zeros(out.shape[:3], bool)
    for k in range(len(out)):
        img = out[k].astype(np.float32)
        region = _ellipse(h, w, rng, 0.06, 0.16)
        if k % 2 == 0:  # cut-paste from another (or the same) normal image, flipped
            donor = normals[rng.integers(n)][::-1, ::-1].astype(np.float32)
            shift = rng.integers(-h // 4, h // 4 + 1, size=2)
            donor = np.roll(donor, tuple(shift), axis=(0, 1))
            img[region] = donor[region]
        else:  # translucent stain of a random colour
            colour = rng.uniform(0, 255, size=3).astype(np.float32)
            alpha = rng.uniform(0.4, 0.8)
            img[region] = (1 - alpha) * img[region] + alpha * colour
        new = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        masks[k] = np.any(new != out[k], axis=-1)
        out[k] = new
    keep = masks.reshape(len(out), -1).any(axis=1)  # a paste can, rarely, change nothing
    return out[keep], masks[keep]


def selection_score(normal_scores: np.ndarray, pseudo_scores: np.ndarray, pseudo_maps: np.ndarray,
                    pseudo_masks: np.ndarray) -> float:
    """Mean of image AUROC (normals vs pseudo-defects) and pixel AUROC on the pseudo-defects."""
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(pseudo_scores))]
    img = image_auroc(labels, np.r_[normal_scores, pseudo_scores])
    pix = pixel_auroc(pseudo_masks, pseudo_maps)
    return 0.5 * (img + pix)
