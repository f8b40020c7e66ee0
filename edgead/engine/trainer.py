"""Training one task: the student learns to match the frozen teacher on normal images (plus replay).

Because the trunk and the teacher are frozen and there is no augmentation, the current task's latents
and teacher features are computed once per task, not once per epoch; every epoch then runs only the
student tail. A replay source hands back latents (and, when it can cache them, teacher features) for the
replayed part of each batch. Model selection uses pseudo-defects on held-out normals, never test data.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from edgead.engine.selection import make_pseudo_defects, selection_score
from edgead.engine.tensors import compute_latents, compute_teacher_features, predict_latents
from edgead.engine.thresholds import DEFAULT_THRESHOLD_RULE, ThresholdRule
from edgead.errors import EdgeadError
from edgead.field_types import check_seed, check_types
from edgead.options import option
from firmware_sim.preprocess import RESIZE_MODES, Preprocess

log = logging.getLogger(__name__)

# Above this, teacher features are recomputed per batch instead of cached for the task (host RAM guard).
TEACHER_CACHE_LIMIT_BYTES = 3 * 2**30
# With a steps budget a tiny category runs hundreds of epochs (33 images, batch 8, 1,000 steps: 250 epochs);
# a selection check every epoch would then cost as much as the training (measured: battery weld, 300 steps,
# 421 s). So a steps budget spaces the checks out to at most this many (plus the last epoch).
MAX_SELECTION_CHECKS = 20
# Fewer optimiser steps than this starve the student (a 36-image folder with --epochs 3: 3 steps, image AUROC
# 0.71 vs 1.000 with 200 steps): such a run is warned about.
FEW_STEPS = 200


class BudgetWarning(UserWarning):
    """A task trained with fewer than FEW_STEPS optimiser steps (explicit --epochs or --steps)."""

# Epochs per task when neither --epochs nor --steps is given (and the budget floor does not apply).
DEFAULT_EPOCHS = 20


@dataclass
class TrainConfig:
    """How one task is trained. Each field is also an option of `edgead train` and `Detector.fit`
    (edgead.options: the help text, choices and bounds are declared here, once)."""

    # None: DEFAULT_EPOCHS under the budget floor (min_steps); an explicit number of epochs is trained as given.
    epochs: int | None = option(None, default_text=f"{DEFAULT_EPOCHS}, or the budget floor on small data",
                                help="Training epochs per task (ignored with --steps). Given explicitly, no floor "
                                     "applies (a warning when that makes fewer than 200 optimiser steps).")
    batch_size: int = option(32, help="Images per optimiser step.")
    lr: float = option(0.4, help="SGD learning rate.")
    momentum: float = option(0.9, help="SGD momentum.")
    weight_decay: float = option(1e-4, help="SGD weight decay.")
    seed: int = option(0, help="Seed of every random choice (data split, order, init).")
    device: str = option("cpu", help="torch device for training.")
    replay_ratio: float = option(0.5, help="Fraction of each batch replayed (from the second task on).")
    select_every: int = option(1, help="Epochs between model-selection checks on held-out normals (0: keep the "
                                        "last epoch).")
    val_fraction: float = option(0.1, help="Share of the normal training images held out for model selection "
                                           "and the threshold.")
    progress: bool = option(True, flag="quiet", help="Progress bars (--quiet: none).")
    # Steps make a 33-image and a 3,000-image category train comparably long; with steps, the epochs run until
    # the budget is spent (the last may be cut).
    steps: int | None = option(None, help="Training budget in optimiser steps per task instead of --epochs (same "
                                          "for small and large categories).")
    # The budget floor (docs/training-budget.md): when the default epochs would give fewer than `min_steps`
    # optimiser steps (a small category: 20 epochs of 37 images at batch 32 are 40 steps), the task trains
    # `floor_steps` steps at batch `floor_batch` instead. Chosen on DEV halves of six real categories
    # (benchmarks/bench_budget.py). Explicit --epochs or --steps are kept as given.
    min_steps: int = option(300, min=0, help="Budget floor: when the default epochs would give fewer optimiser "
                                             "steps than this, train --floor-steps steps at --floor-batch instead "
                                             "(0: off).")
    floor_steps: int = option(1000, min=1, help="Optimiser steps of a task trained under the budget floor.")
    floor_batch: int = option(8, min=1, help="Batch size of a task trained under the budget floor.")
    resize: str = option("squash", choices=RESIZE_MODES,
                         help="Non-square images: squash to a square, pad (letterbox, padding left out of pixel "
                              "metrics) or tile (square tiles, score = max). Recorded in checkpoints and exports.")
    # How the deployment threshold is set from the held-out normals after training (edgead.engine.thresholds).
    threshold_rule: str = option(DEFAULT_THRESHOLD_RULE,
                                 help="Deployment threshold from the held-out normals: pseudo-band:Q,A (default: "
                                      "pseudo-f1 kept between their Q-quantile and the far:A cut), far:A (at most a "
                                      "share A of good parts rejected, split-conformal), quantile:Q, sigma:K (mean + "
                                      "K std) or pseudo-f1 (best F1 against pseudo-defects). See docs/thresholds.md.")

    def __post_init__(self) -> None:
        check_types(self)  # fit(epochs="1") and config files: a clear error before any comparison below
        check_seed(self.seed)
        checks = [
            (self.epochs is None or self.epochs >= 1, f"epochs {self.epochs}: expected >= 1"),
            (self.steps is None or self.steps >= 1, f"steps {self.steps}: expected >= 1"),
            (self.min_steps >= 0, f"min steps {self.min_steps}: expected >= 0 (0: no floor)"),
            (self.floor_steps >= 1 and self.floor_batch >= 1,
             f"floor {self.floor_steps} steps at batch {self.floor_batch}: expected both >= 1"),
            (self.resize in RESIZE_MODES, f"resize {self.resize!r}: expected one of {', '.join(RESIZE_MODES)}"),
            (self.batch_size >= 1, f"batch size {self.batch_size}: expected >= 1"),
            (self.lr > 0, f"learning rate {self.lr}: expected > 0"),
            (0.0 <= self.replay_ratio < 1.0, f"replay ratio {self.replay_ratio}: expected a value in [0, 1)"),
            (self.select_every >= 0, f"select-every {self.select_every}: expected >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise EdgeadError(msg)
        self.threshold_rule = str(ThresholdRule.parse(self.threshold_rule))  # a clear error, one spelling

    def to_dict(self) -> dict:
        return asdict(self)

    def n_epochs(self, n_samples: int, per_batch: int) -> int:
        """Epochs to run: ``epochs``, or as many as the ``steps`` budget needs at this batch size."""
        if self.steps is None:
            return self.epochs or DEFAULT_EPOCHS
        per_epoch = -(-max(n_samples, 1) // max(per_batch, 1))
        return -(-self.steps // per_epoch)

    def budget(self, n_samples: int, replay_ratio: float = 0.0) -> TrainConfig:
        """The budget this task trains with: ``self``, or, when its epochs would give fewer than ``min_steps``
        optimiser steps on ``n_samples`` images (replay_ratio: the share of each batch that is replay), a copy
        with ``floor_steps`` steps at batch ``floor_batch``. Explicit epochs or steps are never changed."""
        if self.steps is not None or self.epochs is not None or not self.min_steps:
            return self
        n_cur = max(1, self.batch_size - int(round(self.batch_size * replay_ratio)))
        if DEFAULT_EPOCHS * -(-max(n_samples, 1) // n_cur) >= self.min_steps:
            return self
        return replace(self, steps=self.floor_steps, batch_size=self.floor_batch)


class ReplaySource(Protocol):
    def prepare(self, model, pre: Preprocess, device: str) -> None: ...
    def __len__(self) -> int: ...
    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor] | None]: ...


def _cacheable(model, latents: torch.Tensor) -> bool:
    with torch.no_grad():
        per_sample = sum(f[0].numel() for f in model.teacher_features(latents[:1])) * 4
    return per_sample * len(latents) <= TEACHER_CACHE_LIMIT_BYTES


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)  # numpy randomness goes through explicit seeded Generators


def train_task(model, train_images: np.ndarray, val_images: np.ndarray, pre: Preprocess, cfg: TrainConfig,
               *, replay: ReplaySource | None = None, seed: int | None = None, desc: str = "train") -> dict:
    """Train model.student_tail in place; returns timings and the selection history."""
    if len(train_images) == 0:
        raise EdgeadError("no training images for this task")
    asked = cfg
    cfg = cfg.budget(len(train_images), cfg.replay_ratio if replay is not None and len(replay) > 0 else 0.0)
    seed = cfg.seed if seed is None else seed
    _seed_all(seed)
    rng = np.random.default_rng(seed)
    dev = cfg.device
    # channels_last while training: PyTorch's CPU kernels for MCUNet's depthwise 5x5/7x7 convolutions are
    # much faster in it (benchmarks/bench_cl_speed.py; benchmarks/README.md); the model goes back to the
    # default format before it is returned.
    model.to(dev, memory_format=torch.channels_last)
    t0 = time.perf_counter()
    z_cur = compute_latents(model, train_images, pre, device=dev).contiguous(memory_format=torch.channels_last)
    t_cur = compute_teacher_features(model, z_cur) if _cacheable(model, z_cur) else None
    use_replay = replay is not None and len(replay) > 0 and cfg.replay_ratio > 0
    if use_replay:
        replay.prepare(model, pre, dev)
    sel = _SelectionSet(model, val_images, pre, seed, dev) if cfg.select_every and len(val_images) else None
    prep_s = time.perf_counter() - t0

    n_rep = int(round(cfg.batch_size * cfg.replay_ratio)) if use_replay else 0
    n_cur = max(1, cfg.batch_size - n_rep)
    opt = torch.optim.SGD(model.student_tail.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    history, epoch_s = [], []
    best = (-np.inf, None, 0)
    n_epochs = cfg.n_epochs(len(z_cur), n_cur)
    every = cfg.select_every if cfg.steps is None else max(cfg.select_every, n_epochs // MAX_SELECTION_CHECKS)
    steps_done = 0
    # disable=None: tqdm shows the bar only when stderr is a terminal (not in logs or CI output)
    # leave=True: the finished bar stays as one line per task (epochs, time, last loss and selection score)
    bar = tqdm(range(n_epochs), desc=desc, disable=True if not cfg.progress else None, leave=True)
    for epoch in bar:
        te = time.perf_counter()
        model.train()
        losses = []
        order = rng.permutation(len(z_cur))
        for start in range(0, len(z_cur), n_cur):
            if cfg.steps is not None and steps_done == cfg.steps:
                break
            steps_done += 1
            idx = order[start:start + n_cur]
            z = z_cur[idx]
            t = [f[idx] for f in t_cur] if t_cur is not None else model.teacher_features(z)
            if n_rep:
                z_r, t_r = replay.batch(rng.integers(0, len(replay), size=n_rep))
                t_r = t_r if t_r is not None else model.teacher_features(z_r)
                if z_r.shape[-2:] == z.shape[-2:]:
                    loss = model.loss_from_latent(torch.cat([z, z_r]), [torch.cat(p) for p in zip(t, t_r, strict=True)])
                else:  # latent crops (edgead.cl.crops): their own pass, weighted by their share of the batch
                    loss = (len(z) * model.loss_from_latent(z, t)
                            + len(z_r) * model.loss_from_latent(z_r, t_r)) / (len(z) + len(z_r))
            else:
                loss = model.loss_from_latent(z, t)
            if not torch.isfinite(loss):
                raise EdgeadError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); "
                                  f"try a smaller learning rate (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch_s.append(time.perf_counter() - te)
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": epoch_s[-1]}
        if sel is not None and ((epoch + 1) % every == 0 or epoch + 1 == n_epochs):
            rec["selection"] = sel.score(model)
            if rec["selection"] > best[0]:
                best = (rec["selection"], copy.deepcopy(model.student_tail.state_dict()), epoch + 1)
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", sel=f"{rec.get('selection', float('nan')):.3f}")
    if best[1] is not None:
        model.student_tail.load_state_dict(best[1])
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    if cfg is not asked:
        log.info("%s: %d epochs at batch %d would be fewer than %d optimiser steps on %d images; trained %d "
                 "steps at batch %d instead (the budget floor; min_steps=0 turns it off)", desc, DEFAULT_EPOCHS,
                 asked.batch_size, asked.min_steps, len(train_images), cfg.steps, cfg.batch_size)
    if steps_done < FEW_STEPS:
        warnings.warn(f"{desc}: only {steps_done} optimiser steps on {len(train_images)} images; fewer than "
                      f"{FEW_STEPS} steps starve the student (leave --epochs out for the budget floor, or give "
                      f"--steps, e.g. --steps 1000 --batch-size 8)", BudgetWarning, stacklevel=2)
    return {
        "epochs": n_epochs,
        "steps": steps_done,
        "batch_size": cfg.batch_size,
        "budget_floor": cfg is not asked,
        "selected_epoch": best[2] if best[1] is not None else n_epochs,
        "selection_score": None if best[1] is None else float(best[0]),
        "history": history,
        "epoch_seconds": epoch_s,
        "prepare_seconds": prep_s,
        "train_seconds": prep_s + sum(epoch_s),
        "replay_per_batch": n_rep,
    }


class _SelectionSet:
    """Held-out normals and their pseudo-defects, as latents computed once."""

    def __init__(self, model, val_images: np.ndarray, pre: Preprocess, seed: int, device: str):
        pseudo, self.masks = make_pseudo_defects(val_images, seed)
        self.size = pre.image_size
        self.z_norm = compute_latents(model, val_images, pre, device=device)
        self.z_pseudo = compute_latents(model, pseudo, pre, device=device)

    def score(self, model) -> float:
        _, s_norm = predict_latents(model, self.z_norm, self.size)
        maps, s_pseudo = predict_latents(model, self.z_pseudo, self.size)
        return float(selection_score(s_norm, s_pseudo, maps, self.masks))
