"""The STFPM loss, anomaly map and image score (docs/method.md), written once.

Per level the features are L2-normalised over channels. loss_l = 0.5/(H_l W_l) * sum (t - s)^2 (averaged
over the batch), summed over levels. Map per level: 0.5 * ||t - s||^2 over channels, bilinearly upsampled;
the level maps are multiplied; `image_score` is the map's maximum. A model whose DetectorConfig.score asks for
more (a Gaussian blur, a top-k mean) applies firmware_sim.anomaly_map.ScorePost to these maps: that numpy code
is the one implementation, shared with the export fidelity check and the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _norm(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f, p=2, dim=1)


def st_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    total = teacher[0].new_zeros(())
    for t, s in zip(teacher, student, strict=True):
        h, w = t.shape[-2:]
        total = total + 0.5 / (h * w) * ((_norm(t) - _norm(s)) ** 2).sum(dim=(1, 2, 3)).mean()
    return total


def level_distances(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per level (N, H_l, W_l): 0.5 * squared distance of the normalised features."""
    return [0.5 * ((_norm(t) - _norm(s)) ** 2).sum(dim=1) for t, s in zip(teacher, student, strict=True)]


def combine_levels(distances: list[torch.Tensor], out_size: int) -> torch.Tensor:
    amap = None
    for d in distances:
        up = F.interpolate(d.unsqueeze(1), size=(out_size, out_size), mode="bilinear", align_corners=False)
        amap = up if amap is None else amap * up
    return amap.squeeze(1)


def anomaly_map(teacher: list[torch.Tensor], student: list[torch.Tensor], out_size: int) -> torch.Tensor:
    return combine_levels(level_distances(teacher, student), out_size)


def image_score(amap: torch.Tensor) -> torch.Tensor:
    return amap.flatten(1).amax(dim=1)
