"""Refitting an earlier product's threshold after later updates, from its held-out normals' stored trunk latents.

The default recalibration (edgead.cl.calibration) scales a task's threshold by the drift of one small anchor
crop. On the real five-product stream that ratio is too noisy: Magnetic-Tile and BSData lost 0.1-0.3 balanced
accuracy to it, while the threshold rule re-applied to the task's held-out normals under the final model (the
benchmark's *oracle*) came within 0.03 of the best threshold (docs/thresholds.md, "Following the drift").

``--recalibrate refit`` makes that oracle deployable on the host. When task j is calibrated, the frozen trunk's
latents of **all** its held-out normals, and of the pseudo-defects pasted into them when the run's threshold rule
needs those (the same pseudo-defects `fit_calibration` draws, same seed), are kept int8-channel encoded. The
trunk is frozen, so these latents stay exact inputs of the teacher tail and the student; no image is kept.
After every later update, task j's threshold is

    fitted threshold x rule(scores of the stored set now) / rule(scores of the stored set when j was fitted)

The ratio of the same rule on the same decoded latents cancels the codec's rounding; what is left is how the
student's drift moved the whole normal distribution (and the pseudo-defects against it), not one crop's score.

The cost is host memory, outside the replay budget: one whole latent per held-out normal and per pseudo-defect
(24.6 kB each for MCUNet-in3 at 256 px: about 0.9 MB for a product with 12 held-out normals and the default
pseudo-band rule). It is reported as ``calibration_bytes`` in results.json. A device never holds it: the
thresholds it receives are computed on the host. Tasks known only from a device buffer have no held-out images;
they keep the anchor recalibration.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from edgead.engine.selection import make_pseudo_defects
from edgead.engine.tensors import compute_latents
from edgead.engine.thresholds import ThresholdRule
from firmware_sim.atomic import atomic_write
from firmware_sim.codecs import EncodedLatent, get_codec

SET_CODEC = "int8-channel"
_BATCH = 16  # latents scored at once: bounds the memory of the anomaly maps


class CalibrationSet:
    """Per task: the encoded trunk latents of its held-out normals (and pseudo-defects) and the rule's
    threshold on them when the task was calibrated."""

    def __init__(self, rule: str | ThresholdRule, image_size: int):
        self.rule = ThresholdRule.parse(rule)
        self.image_size = image_size
        self.codec = get_codec(SET_CODEC)
        self.normals: dict[int, list[EncodedLatent]] = {}
        self.pseudo: dict[int, list[EncodedLatent]] = {}
        self.fit_thresholds: dict[int, float] = {}

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for part in (self.normals, self.pseudo) for es in part.values() for e in es)

    def has(self, task_index: int) -> bool:
        return bool(self.normals.get(task_index))

    def add(self, task_index: int, model, val_images: np.ndarray, pre) -> None:
        """Keep task ``task_index``'s held-out normals (and their pseudo-defects, drawn with the seed
        `fit_calibration` uses: the task index) as latents, and the rule's threshold on them now."""
        if len(val_images) == 0:
            return
        self.normals[task_index] = self._encode(compute_latents(model, val_images, pre))
        if self.rule.needs_pseudo:
            pseudo = make_pseudo_defects(val_images, task_index)[0]
            self.pseudo[task_index] = self._encode(compute_latents(model, pseudo, pre))
        self.fit_thresholds[task_index] = self.threshold(model, task_index)

    def _encode(self, z: torch.Tensor) -> list[EncodedLatent]:
        return [self.codec.encode(x) for x in z.cpu().numpy().astype(np.float32)]

    def _scores(self, model, encoded: list[EncodedLatent]) -> np.ndarray:
        was = model.training
        model.eval()
        out = []
        try:
            with torch.no_grad():
                dev = next(model.parameters()).device
                for s in range(0, len(encoded), _BATCH):
                    z = np.stack([self.codec.decode(e) for e in encoded[s:s + _BATCH]]).astype(np.float32)
                    out.append(model.predict_latent(torch.from_numpy(z).to(dev), self.image_size)[1].cpu().numpy())
        finally:
            model.train(was)
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def threshold(self, model, task_index: int) -> float:
        """The rule's threshold on the task's stored set under ``model`` (nan without a set)."""
        if not self.has(task_index):
            return float("nan")
        pseudo = self._scores(model, self.pseudo[task_index]) if self.pseudo.get(task_index) else None
        return float(self.rule.threshold(self._scores(model, self.normals[task_index]), pseudo))

    def ratio(self, model, task_index: int) -> float:
        """How far the rule's threshold on the stored set moved since the task was calibrated (nan: unknown)."""
        before = self.fit_thresholds.get(task_index, float("nan"))
        now = self.threshold(model, task_index)
        return now / before if math.isfinite(before) and before > 0 and math.isfinite(now) else float("nan")

    def save(self, path: Path) -> None:
        tasks = sorted(self.normals)
        arrays = {"tasks": np.array(tasks, np.int64), "rule": np.array(str(self.rule)),
                  "fit_thresholds": np.array([self.fit_thresholds[t] for t in tasks], np.float64)}
        for t in tasks:
            for kind, part in (("n", self.normals), ("p", self.pseudo)):
                for k, e in enumerate(part.get(t, [])):
                    arrays[f"{kind}{t}_{k}"] = np.frombuffer(e.to_bytes(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(buf.getvalue()))

    def load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as z:
            tasks = [int(t) for t in z["tasks"]]
            self.fit_thresholds = {t: float(s) for t, s in zip(tasks, z["fit_thresholds"], strict=True)}
            self.normals = {t: [EncodedLatent.from_bytes(z[k].tobytes()) for k in _keys(z.files, "n", t)]
                            for t in tasks}
            self.pseudo = {t: [EncodedLatent.from_bytes(z[k].tobytes()) for k in _keys(z.files, "p", t)]
                           for t in tasks}


def _keys(files: list[str], kind: str, task: int) -> list[str]:
    """The npz keys of one task's stored latents of a kind (n: normals, p: pseudo-defects), in order."""
    pre = f"{kind}{task}_"
    return sorted((k for k in files if k.startswith(pre) and k[len(pre):].isdigit()), key=lambda k: int(k[len(pre):]))
