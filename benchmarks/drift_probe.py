"""Raw material for choosing how an earlier product's threshold follows the student's drift (bench_drift.py).

An evaluation plugin of the learner (edgead.cl.learner) that never changes the run. For every evaluation of
task j after task i it records the test labels and scores, task j's threshold as fitted and as deployed (the
anchor-scaled one), the oracle threshold when ResearchThresholds ran first, and *probe* statistics of up to
``per_task`` of task j's held-out normals kept as full trunk latents when j was calibrated: each probe's image
score and the mean of its anomaly map under the current model, and the same two of one anchor-sized crop of it
(what a deployable anchor keeps: edgead.cl.calibration.anchor_side). From these, bench_drift.py replays other
recalibration rules (more anchors, a map-mean statistic, a damped or bounded ratio) on the very same scores,
choosing on the DEV half of each test set and reporting on REPORT.
"""

from __future__ import annotations

import numpy as np
import torch


class DriftProbe:
    def __init__(self, per_task: int = 8, seed: int = 0):
        self.per_task, self.seed = per_task, seed
        self.latents: dict[int, torch.Tensor] = {}
        self.crops: dict[int, torch.Tensor] = {}
        self.records: list[dict] = []

    @staticmethod
    def _stats(model, z: torch.Tensor, out_size: int) -> tuple[list[float], list[float]]:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                maps, scores = model.predict_latent(z.to(next(model.parameters()).device), out_size)
        finally:
            model.train(was)
        return scores.cpu().double().tolist(), maps.flatten(1).mean(1).cpu().double().tolist()

    def _probe(self, learner, j: int) -> dict:
        full = self._stats(learner.model, self.latents[j], learner.pre.image_size)
        crop = self.crops[j]
        crop_stats = self._stats(learner.model, crop, max(1, crop.shape[-1] * learner.pre.image_size
                                                           // self.latents[j].shape[-1]))
        return {"probe_image": full[0], "probe_mean": full[1], "crop_image": crop_stats[0],
                "crop_mean": crop_stats[1]}

    def after_evaluation(self, learner, i: int, j: int, data, scores, row: dict) -> None:
        from edgead.cl.calibration import anchor_side
        from edgead.cl.crops import random_crop
        from edgead.engine.tensors import compute_latents

        if j not in self.latents:  # j was calibrated in this step: keep its probes
            val = data.val.images
            pick = np.sort(np.random.default_rng([self.seed, j, 11]).permutation(len(val))[: self.per_task])
            z = compute_latents(learner.model, val[pick], learner.pre).detach().cpu()
            side, rng = anchor_side(tuple(z.shape[1:])), np.random.default_rng([self.seed, j, 13])
            self.latents[j] = z
            self.crops[j] = torch.from_numpy(np.stack([random_crop(x, side, rng) for x in z.numpy()]))
        cal, fit = learner.cals[j], learner.fit_cals[j]
        test = data.test
        self.records.append({
            "after": i, "task": j, "name": learner.names[j],
            "labels": np.asarray(test.labels).astype(int).tolist(),
            "defect_types": list(test.defect_types),
            "scores": np.asarray(scores, np.float64).tolist(),
            "fit_threshold": fit.threshold, "task_threshold": cal.threshold, "drift_ratio": cal.drift_ratio,
            "oracle_threshold": row.get("threshold_oracle"), "n_normals": len(data.val),
            **self._probe(learner, j)})
