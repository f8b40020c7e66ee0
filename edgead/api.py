"""The Python API: `from edgead import Detector`, for notebooks and scripts.

    det = Detector(model="paste", backbone="mcunet-in3", image_size=256)
    det.fit("data/mvtec", tasks=["hazelnut", "bottle"], strategy="compressed-replay", codec="int8-channel",
            budget="500kB", out="runs/a")
    pred = det.predict("new_images/")          # scores, normalized, decisions, maps
    det.evaluate()                              # the test split of every task seen (also RUN/eval.json)
    det.export("artifacts/a", formats=["tflite-int8"])
    det2 = Detector.load("runs/a")

Every method wraps the library functions the CLI calls (`run_stream`, `evaluate_run`, `export_run`, the
host scorer of `edgead predict`), so API and CLI give the same numbers; `fit` records RUN/config.yaml in the
same form as `edgead train`, so `edgead train --config RUN/config.yaml --out NEW` repeats an API run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgead.errors import EdgeadError

ImageLike = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class Predictions:
    """What `Detector.predict` returns, one entry per image, in input order."""

    scores: np.ndarray  # (N,) float32: the anomaly map's maximum
    normalized: np.ndarray  # (N,) float32 in 0..1, the threshold at 0.5
    decisions: np.ndarray  # (N,) bool: anomalous (score above the calibrated threshold)
    maps: np.ndarray  # (N, S, S) float32 anomaly maps at the model's resolution
    paths: list[str | None]  # the file of each image (None for in-memory images)
    threshold: float

    def __len__(self) -> int:
        return len(self.scores)


def _as_image_list(images) -> tuple[list[ImageLike], list[str | None]]:
    """A path (file or folder), a PIL image, a uint8 array (one image or a batch N×H×W×3), or a list of these."""
    from firmware_sim.commands import list_images

    if isinstance(images, str | os.PathLike):
        files = list_images(images)
        return list(files), [str(p) for p in files]
    if isinstance(images, Image.Image):
        return [images], [None]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images), [None] * len(images)
        return [images], [None]
    if isinstance(images, Sequence):
        items: list[ImageLike] = []
        paths: list[str | None] = []
        for x in images:
            more, p = _as_image_list(x)
            items += more
            paths += p
        return items, paths
    raise EdgeadError(f"images of type {type(images).__name__}: expected a path, a folder, a PIL image, a uint8 "
                      "array or a list of these")


class Detector:
    """A PaSTe or STFPM anomaly detector: train over one task or a stream, predict, evaluate, export, save."""

    def __init__(self, model: str = "paste", backbone: str = "mcunet-in3", *, levels: Sequence[int] | None = None,
                 bootstrap: int | None = None, image_size: int = 256, pretrained: bool = True,
                 weights: str | os.PathLike | None = None, device: str = "cpu"):
        """Args:
            model: "paste" (shared frozen trunk) or "stfpm".
            backbone: "mcunet-in3", "mobilenet_v2" or "resnet18".
            levels: feature levels (stage indices); default the backbone's.
            bootstrap: last shared stage (PaSTe); default the backbone's.
            image_size: square input size in pixels.
            pretrained: ImageNet teacher (False: random, experiments only).
            weights: the backbone's ImageNet weights file (default: found as the CLI finds it,
                `$EDGEAD_WEIGHTS_DIR`, the cache, or a download).
            device: torch device for training and prediction.
        """
        from edgead.models.teacher_student import DetectorConfig

        self.config = DetectorConfig.defaults(model, backbone, levels=None if levels is None else tuple(levels),
                                              bootstrap=bootstrap, image_size=image_size, pretrained=pretrained)
        self.weights = None if weights is None else Path(weights)
        self.device = device
        self.run_dir: Path | None = None
        self.results: dict | None = None
        self._scorer = None  # edgead.predict.HostDetector once trained or loaded
        self._task_index: int | None = None  # the run's task whose checkpoint is loaded (None: the last)

    # -- training ----------------------------------------------------------------------------------------------
    def fit(self, data: str | os.PathLike | None = None, tasks: str | Sequence[str] | None = None, *,
            normal: str | os.PathLike | None = None, abnormal: str | os.PathLike | None = None,
            mask: str | os.PathLike | None = None, normal_test: str | os.PathLike | None = None,
            max_train: int | None = None, strategy: str = "finetune", codec: str | None = None,
            budget: str | int | None = None, memory_size: int = 100, policy: str = "random",
            replay_ratio: float = 0.5, epochs: int = 20, steps: int | None = None, resize: str = "squash",
            batch_size: int = 32, lr: float = 0.4,
            momentum: float = 0.9, weight_decay: float = 1e-4, select_every: int = 1, val_fraction: float = 0.1,
            seed: int = 0, out: str | os.PathLike | None = None, resume: bool = False, skip_bad: bool = False,
            force: bool = False,
            progress: bool = True) -> dict:
        """Train over one task or a stream of tasks (as `edgead train`), then keep the last checkpoint.

        Args:
            data: dataset root in MVTec AD layout, or a dataset .yaml naming image folders.
            tasks: task names in order (list or comma-separated); default all.
            normal, abnormal, mask, normal_test: one task from plain folders instead of `data`.
            max_train: at most this many normal training images per task (seeded).
            strategy: "finetune", "joint", "replay" or "compressed-replay".
            codec: latent codec for compressed-replay (fp32, fp16, int8-tensor, int8-channel, int4-channel, pca).
            budget: replay memory in bytes (int) or as text ("500kB", "2.46MB").
            memory_size: replay samples when no budget.
            policy: "random" or "coverage" (which latents compressed replay keeps).
            replay_ratio, epochs, steps, resize, batch_size, lr, momentum, weight_decay, select_every, val_fraction,
            seed:
                training settings, as the `edgead train` options of the same names.
            out: run folder (default: a new temporary folder, see `run_dir`).
            resume: continue a killed run in `out`.
            force: write into an `out` folder that holds other files (never over a run).
            skip_bad: skip unreadable images with a warning.
            progress: show progress bars.

        Returns:
            The run's results (results.json): metric matrices, averages, forgetting, memory, timings.
        """
        from edgead.cl.config import ReplayConfig
        from edgead.cl.run_folder import check_new_run_folder
        from edgead.cl.runner import run_stream
        from edgead.config_file import record_config
        from edgead.data.folder import stream_from_options
        from edgead.engine.trainer import TrainConfig
        from edgead.outputs import check_writable
        from firmware_sim.sizes import parse_size

        replay = ReplayConfig(strategy, codec, parse_size(budget) if budget is not None else None, memory_size,
                              policy)
        replay.check_detector(self.config.model)
        out = Path(out).resolve() if out is not None else Path(tempfile.mkdtemp(prefix="edgead-run-"))
        task_text = tasks if isinstance(tasks, str) or tasks is None else ",".join(tasks)
        if not resume:  # before dataset.yaml and config.yaml are written into `out`
            check_new_run_folder(out, force=force)
            check_writable(out, what="--out")
        stream = stream_from_options(data, task_text, normal=normal, abnormal=abnormal, mask=mask,
                                     normal_test=normal_test, max_train=max_train, out=out)
        train = TrainConfig(epochs=epochs, steps=steps, resize=resize, batch_size=batch_size, lr=lr, momentum=momentum,
                            weight_decay=weight_decay, seed=seed, device=self.device, replay_ratio=replay_ratio,
                            select_every=select_every, val_fraction=val_fraction, progress=progress)
        paths = {"data": data, "normal": normal, "abnormal": abnormal, "mask": mask, "normal_test": normal_test}
        if not (out / "state.json").exists():
            c = self.config
            record_config(out, {  # the keys of `edgead train`; tests/host/test_api.py checks they stay valid
                **{k: None if v is None else Path(v) for k, v in paths.items()}, "max_train": max_train,
                "tasks": task_text, "model": c.model, "backbone": c.backbone,
                "levels": ",".join(map(str, c.levels)), "bootstrap": c.bootstrap, "image_size": c.image_size,
                "strategy": strategy, "codec": codec, "budget": None if budget is None else str(budget),
                "memory_size": memory_size, "policy": policy, "replay_ratio": replay_ratio, "epochs": epochs, "steps": steps, "resize": resize,
                "batch_size": batch_size, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                "select_every": select_every, "val_fraction": val_fraction, "seed": seed, "device": self.device,
                "weights": self.weights, "no_pretrained": not c.pretrained, "skip_bad": skip_bad})
        self._task_index = None
        self.results = run_stream(stream, self.config, train, replay, out,
                                  weights=None if self.weights is None else str(self.weights), resume=resume,
                                  skip_bad=skip_bad, force=True, command="edgead.api.Detector.fit",
                                  log=lambda m: None)
        self._use_run(out, None)
        return self.results

    def _use_run(self, run_dir: Path, task: str | int | None) -> None:
        from edgead.cl.results import read_results
        from edgead.predict import load_host_detector

        self._scorer = load_host_detector(run_dir, task, self.device)
        self.run_dir = Path(run_dir).resolve()
        self.results = read_results(self.run_dir)
        self.config = self._scorer.model.config

    def _require_model(self, what: str):
        if self._scorer is None:
            raise EdgeadError(f"Detector.{what}: no trained model yet; call fit(...) or Detector.load(...) first")
        return self._scorer

    # -- using it ----------------------------------------------------------------------------------------------
    def predict(self, images) -> Predictions:
        """Score images with the trained model (the same numbers as `edgead predict`).

        Args:
            images: an image file or a folder (searched recursively), a PIL image, a uint8 array (H, W, 3) or
                a batch (N, H, W, 3), or a list of these.

        Returns:
            Predictions: scores, normalized scores, decisions (anomalous), anomaly maps, paths, threshold.
        """
        scorer = self._require_model("predict")
        items, paths = _as_image_list(images)
        if not items:
            raise EdgeadError("Detector.predict: no images given")
        results = [scorer.infer(x) for x in items]
        return Predictions(np.array([r.score for r in results], np.float32),
                           np.array([r.normalized for r in results], np.float32),
                           np.array([r.anomalous for r in results], bool),
                           np.stack([r.map for r in results]).astype(np.float32), paths, scorer.threshold)

    def evaluate(self, data: str | os.PathLike | None = None, tasks: str | Sequence[str] | None = None,
                 per_defect: bool = False) -> dict:
        """Test metrics (image/pixel AUROC, F1, AP, AUPRO) of the trained model.

        Args:
            data: a dataset (MVTec root or dataset .yaml) to evaluate on; default the run's own tasks, as
                `edgead eval` (which also writes RUN/eval.json).
            tasks: task names of `data` (default all).
            per_defect: also break the metrics down by defect type.

        Returns:
            {"metrics": {task: {metric: value}}, "average": {metric: value}, ...}.
        """
        from edgead.cl.evaluate_run import evaluate_run

        scorer = self._require_model("evaluate")
        if data is None:
            if self.run_dir is None:
                raise EdgeadError("Detector.evaluate: this detector was loaded from a checkpoint file; pass data=")
            i = int(self._scorer_task_index())
            return evaluate_run(self.run_dir, i, per_defect)
        from edgead.cl.evaluate_run import evaluate_tasks
        from edgead.data.folder import open_stream

        cfg = (self.results or {}).get("config", {}).get("train", {})
        names = [tasks] if isinstance(tasks, str) else tasks
        out, average = evaluate_tasks(scorer.model, scorer.preprocess, open_stream(data, names),
                                      cfg.get("val_fraction", 0.1), cfg.get("seed", 0), per_defect, self.device)
        return {"tasks": list(out), "metrics": out, "average": average}

    def _scorer_task_index(self) -> int:
        return self._task_index if self._task_index is not None else int(self.results["completed_tasks"]) - 1

    def export(self, out: str | os.PathLike, formats: Sequence[str] = ("tflite-int8", "onnx", "onnx-int8"), *,
               calibration: int = 32, io: str = "int8", allow_drift: bool = False, force: bool = False,
               max_image_auroc_drop: float = 0.02, max_pixel_auroc_drop: float = 0.01,
               data: str | os.PathLike | None = None) -> dict:
        """Export the trained run for devices (as `edgead export`): int8 TFLite / ONNX, fidelity, manifest.

        Args:
            out: artifact folder.
            formats: any of "tflite-int8" (mcunet-in3 only), "onnx", "onnx-int8".
            calibration: normal training images for the int8 ranges.
            io: TFLite input/output type, "int8" or "uint8".
            allow_drift: publish even when accuracy drifts past the tolerance.
            force: replace a non-empty `out`.
            max_image_auroc_drop, max_pixel_auroc_drop: the fidelity gate.
            data: the dataset, if it has moved since training.

        Returns:
            {"out": Path, "manifest": dict, "fidelity": dict}.
        """
        from export.fidelity import Tolerance
        from export.formats import parse_formats
        from export.pipeline import ExportOptions, export_run

        self._require_model("export")
        if self.run_dir is None:
            raise EdgeadError("Detector.export needs a training run: fit(...) or Detector.load(RUN_DIR)")
        opts = ExportOptions(formats=parse_formats(list(formats)), task=self._scorer_task_index(),
                             calibration=calibration, io=io,
                             tolerance=Tolerance(max_image_auroc_drop, max_pixel_auroc_drop),
                             allow_drift=allow_drift, data_root=None if data is None else Path(data), force=force)
        return export_run(self.run_dir, out, opts)

    # -- files -------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the trained model (weights, preprocessing, calibration) as one checkpoint file (atomic).

        Returns:
            The path written; `Detector.load(path)` reads it back.
        """
        from edgead.engine.checkpoint import save_checkpoint

        scorer = self._require_model("save")
        return save_checkpoint(path, scorer.model, scorer.preprocess)

    @classmethod
    def load(cls, path: str | os.PathLike, task: str | int | None = None, device: str = "cpu") -> Detector:
        """A trained detector from a run folder (checkpoint after `task`, default the last) or a checkpoint file.

        Args:
            path: run folder (`fit(out=...)`, `edgead train --out`) or a `.pt` file from `save`.
            task: for a run folder, the task (name or index) whose checkpoint to load.
            device: torch device.

        Returns:
            A Detector ready to predict (and, from a run folder, to evaluate and export).
        """
        from edgead.predict import HostDetector, checkpoint_of

        path = Path(path)
        if path.is_dir():
            _, i, _ = checkpoint_of(path, task)
            det = cls.__new__(cls)
            det.weights, det.device, det._task_index = None, device, i
            det._use_run(path, i)
            return det
        from edgead.engine.checkpoint import load_checkpoint

        model, pre, _ = load_checkpoint(path)
        det = cls.__new__(cls)
        det.config, det.weights, det.device, det.run_dir, det.results = model.config, None, device, None, None
        det._task_index = None
        det._scorer = HostDetector(model, pre, device)
        return det

    def __repr__(self) -> str:
        c = self.config
        state = f"run {self.run_dir}" if self.run_dir else ("trained" if self._scorer else "not trained")
        return f"Detector({c.model}/{c.backbone}, {c.image_size} px, levels {list(c.levels)}; {state})"
