"""From stored uint8 images to model inputs, latents and teacher features, in batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from firmware_sim.preprocess import Preprocess


def to_input(images_uint8: np.ndarray, pre: Preprocess, device: str = "cpu") -> torch.Tensor:
    """(N, S, S, 3) uint8 -> normalised (N, 3, S, S) float32 tensor."""
    return torch.from_numpy(pre.normalize(images_uint8)).to(device)


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def compute_latents(model, images_uint8: np.ndarray, pre: Preprocess, batch_size: int = 32,
                    device: str = "cpu") -> torch.Tensor:
    """Trunk outputs of stored images (for STFPM: the normalised images). Frozen, so computed once."""
    if len(images_uint8) == 0:
        return torch.empty(0)
    return torch.cat([model.latent(to_input(images_uint8[s], pre, device)) for s in batches(len(images_uint8),
                                                                                         batch_size)])


@torch.no_grad()
def compute_teacher_features(model, latents: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    parts = [model.teacher_features(latents[s]) for s in batches(len(latents), batch_size)]
    return [torch.cat([p[level] for p in parts]) for level in range(len(parts[0]))] if parts else []


@torch.no_grad()
def predict_images(model, images_uint8: np.ndarray, pre: Preprocess, batch_size: int = 16,
                   device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps (N, S, S) float32 and image scores (N,) for stored images."""
    was_training = model.training
    model.eval()
    maps, scores = [], []
    for s in batches(len(images_uint8), batch_size):
        m, sc = model.predict(to_input(images_uint8[s], pre, device))
        maps.append(m.cpu().numpy().astype(np.float32))
        scores.append(sc.cpu().numpy().astype(np.float32))
    model.train(was_training)
    return np.concatenate(maps), np.concatenate(scores)


@torch.no_grad()
def predict_latents(model, latents: torch.Tensor, out_size: int, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    was_training = model.training
    model.eval()
    maps, scores = [], []
    for s in batches(len(latents), batch_size):
        m, sc = model.predict_latent(latents[s], out_size)
        maps.append(m.cpu().numpy().astype(np.float32))
        scores.append(sc.cpu().numpy().astype(np.float32))
    model.train(was_training)
    return np.concatenate(maps), np.concatenate(scores)
