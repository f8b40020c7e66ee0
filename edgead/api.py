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
    # float32 anomaly maps at each input image's size (N, H, W) when the images share a size, else a list of
    # (H, W) arrays; with predict(map_frame="model") (N, S, S) in the model's square frame.
    maps: np.ndarray | list[np.ndarray]
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
                 weights: str | os.PathLike | None = None, device: str = "cpu", **options):
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
            **options: the other model options of `edgead train` (the fields of DetectorConfig, edgead.options).
        """
        from edgead.models.teacher_student import DetectorConfig
        from edgead.options import check_known, names, take

        check_known(options, [n for n in names(DetectorConfig) if n not in ("model", "backbone", "levels",
                                                                           "bootstrap", "image_size", "pretrained")],
                    "Detector")
        kw = take(DetectorConfig, {**options, "levels": levels, "bootstrap": bootstrap, "image_size": image_size,
                                   "pretrained": pretrained})
        kw["levels"] = None if levels is None else tuple(kw["levels"])
        self.config = DetectorConfig.defaults(model, backbone, **kw)
        self.weights = None if weights is None else Path(weights)
        self.device = device
        self.run_dir: Path | None = None
        self.results: dict | None = None
        self._scorer = None  # edgead.predict.HostDetector once trained or loaded
        self._task_index: int | None = None  # the run's task whose checkpoint is loaded (None: the last)
        self._meta: dict = {}  # for a detector loaded from a .pt file: the data it was trained on

    # -- training ----------------------------------------------------------------------------------------------
    def fit(self, data: str | os.PathLike | None = None, tasks: str | Sequence[str] | None = None, *,
            name: str | None = None, normal: str | os.PathLike | None = None,
            abnormal: str | os.PathLike | None = None, mask: str | os.PathLike | None = None,
            normal_test: str | os.PathLike | None = None, max_train: int | None = None,
            out: str | os.PathLike | None = None, resume: bool = False, skip_bad: bool = False,
            force: bool = False, **options) -> dict:
        """Train over one task or a stream of tasks (as `edgead train`), then keep the last checkpoint.

        Args:
            data: dataset root in MVTec AD layout, or a dataset .yaml naming image folders.
            tasks: task names in order (list or comma-separated); default all.
            name: the name of a `normal=`/`abnormal=` folder task (default: the normal folder's name, or its
                parent's for good/, normal/, ok/).
            normal, abnormal, mask, normal_test: one task from plain folders instead of `data`.
            max_train: at most this many normal training images per task (seeded).
            out: run folder (default: a new temporary folder, see `run_dir`).
            resume: continue a killed run in `out`.
            force: write into an `out` folder that holds other files (never over a run).
            skip_bad: skip unreadable images with a warning.
            **options: the training and replay options of `edgead train`, by the same names (the fields of
                TrainConfig and ReplayConfig in edgead.options' form): epochs, steps, batch_size, lr, strategy,
                codec, budget ("500kB" or bytes), threshold_rule, latent_crop, ... `edgead train --help` lists
                every one with its default and meaning. The model's options are set in `Detector(...)`.

        Returns:
            The run's results (results.json): metric matrices, averages, forgetting, memory, timings.
        """
        from edgead.cl.config import ReplayConfig
        from edgead.cl.run_folder import check_new_run_folder
        from edgead.cl.runner import run_stream
        from edgead.config_file import record_config
        from edgead.data.folder import stream_from_options
        from edgead.engine.trainer import TrainConfig
        from edgead.options import check_known, names, specs, take
        from edgead.outputs import check_writable

        check_known(options, names(TrainConfig, ReplayConfig), "Detector.fit")
        options.setdefault("device", self.device)
        given = dict(options)
        replay = ReplayConfig(**take(ReplayConfig, options))
        replay.check_detector(self.config.model)
        train = TrainConfig(**take(TrainConfig, options))
        out = Path(out).resolve() if out is not None else Path(tempfile.mkdtemp(prefix="edgead-run-"))
        task_text = tasks if isinstance(tasks, str) or tasks is None else ",".join(tasks)
        if not resume:  # before dataset.yaml and config.yaml are written into `out`
            check_new_run_folder(out, force=force)
            check_writable(out, what="--out")
        stream = stream_from_options(data, task_text, normal=normal, abnormal=abnormal, mask=mask,
                                     normal_test=normal_test, max_train=max_train, out=out, name=name)
        paths = {"data": data, "normal": normal, "abnormal": abnormal, "mask": mask, "normal_test": normal_test}
        if not (out / "state.json").exists():
            # The keys of `edgead train`, so `edgead train --config RUN/config.yaml` repeats this run (an
            # inverted flag such as --no-pretrained is recorded as the flag).
            c = self.config
            values = {**{s.name: getattr(c, s.attr) for s in specs(type(c))}, **given}
            recorded = {s.param: (values.get(s.name, s.default) != s.default) if s.flag
                        else values.get(s.name, s.default)
                        for s in (*specs(type(c)), *specs(TrainConfig), *specs(ReplayConfig)) if s.param != "quiet"}
            recorded["levels"] = ",".join(map(str, c.levels))
            record_config(out, {**{k: None if v is None else Path(v) for k, v in paths.items()}, "name": name,
                                "max_train": max_train, "tasks": task_text, **recorded, "weights": self.weights,
                                "skip_bad": skip_bad})
        self._task_index = None
        self.results = run_stream(stream, self.config, train, replay, out,
                                  weights=None if self.weights is None else str(self.weights), resume=resume,
                                  skip_bad=skip_bad, force=True, command="edgead.api.Detector.fit",
                                  log=lambda m: None)
        self._use_run(out, None)
        return self.results

    def learn(self, data: str | os.PathLike | None = None, tasks: str | Sequence[str] | None = None, *,
              normal: str | os.PathLike | None = None, abnormal: str | os.PathLike | None = None,
              mask: str | os.PathLike | None = None, normal_test: str | os.PathLike | None = None,
              name: str | None = None, max_train: int | None = None, epochs: int | None = None,
              steps: int | None = None, budget: str | int | None = None,
              device_buffer: str | os.PathLike | None = None, resume: bool = False,
              skip_bad: bool = False) -> dict:
        """Add products to this detector's run (as `edgead learn --run RUN`), then keep its new last checkpoint.

        Args:
            data, tasks: the new products: a dataset root (MVTec AD layout) or dataset .yaml, and their names.
            normal, abnormal, mask, normal_test, name: one new product from plain folders instead.
            max_train: at most this many normal training images per new task (seeded).
            epochs, steps: training length of the new tasks (default: the run's).
            budget: a larger replay budget from now on (int bytes or text such as "500kB"); never smaller.
            device_buffer: merge what a device kept (a replay buffer file) instead of new images.
            resume: finish a `learn` that was killed.
            skip_bad: skip unreadable images with a warning.

        Returns:
            The run's results (results.json), a row and a column more per new task.
        """
        from edgead.cl.runner import learn_run
        from edgead.cl.sources import learning_stream
        from firmware_sim.sizes import parse_size

        if self.run_dir is None:
            raise EdgeadError("Detector.learn: needs a run folder; use Detector.load(RUN) or fit(..., out=RUN) first")
        budget_bytes = parse_size(budget) if isinstance(budget, str) else budget
        if device_buffer is not None:
            from edgead.cl.device_merge import merge_device_buffer

            self.results = merge_device_buffer(self.run_dir, Path(device_buffer), budget_bytes=budget_bytes,
                                               command="edgead.api.Detector.learn", log=lambda m: None)
        else:
            stream, prepare = None, None
            if not resume:
                task_text = tasks if isinstance(tasks, str) or tasks is None else ",".join(tasks)
                stream, prepare = learning_stream(self.run_dir, data, task_text, normal=normal, abnormal=abnormal,
                                                  mask=mask, normal_test=normal_test, name=name,
                                                  max_train=max_train)
            self.results = learn_run(self.run_dir, stream, epochs=epochs, steps=steps, budget_bytes=budget_bytes,
                                     device=None if self.device == "cpu" else self.device, resume=resume,
                                     skip_bad=skip_bad, command="edgead.api.Detector.learn", log=lambda m: None,
                                     prepare=prepare)
        self._task_index = None
        self._use_run(self.run_dir, None)
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
    def predict(self, images, *, task: str | None = None, out: str | os.PathLike | None = None,
                map_frame: str = "image") -> Predictions:
        """Score images with the trained model (the same numbers as `edgead predict`).

        Args:
            images: an image file or a folder (searched recursively), a PIL image, a uint8 array (H, W, 3) or
                a batch (N, H, W, 3), or a list of these.
            task: decide with this product's own threshold (a task name of the run; default: the task-agnostic
                threshold), as `edgead predict --task`.
            out: folder for one anomaly-map overlay PNG per image (as `edgead predict --out`).
            map_frame: "image": maps and overlays at each input image's size (as anomalib); "model": in the
                model's square frame (image_size x image_size).

        Returns:
            Predictions: scores, normalized scores, decisions (anomalous), anomaly maps, paths, threshold.
        """
        from edgead.predict import HostDetector
        from firmware_sim.commands import MAP_FRAMES
        from firmware_sim.device import image_rgb
        from firmware_sim.overlay import save_overlay

        scorer = self._require_model("predict")
        if map_frame not in MAP_FRAMES:
            raise EdgeadError(f"Detector.predict: map_frame {map_frame!r}: expected one of {', '.join(MAP_FRAMES)}")
        if task is not None:  # a scorer of its own, so the detector's default threshold stays as it is
            scorer = HostDetector(scorer.model, scorer.preprocess, self.device)
            scorer.use_task(str(task))
        items, paths = _as_image_list(images)
        if not items:
            raise EdgeadError("Detector.predict: no images given")
        out = None if out is None else Path(out)
        results, maps = [], []
        for k, x in enumerate(items):
            r = scorer.infer(x)
            results.append(r)
            rgb = np.asarray(image_rgb(x)) if map_frame == "image" else r.pixels
            amap = scorer.preprocess.to_image(r.map, (rgb.shape[1], rgb.shape[0])) if map_frame == "image" else r.map
            maps.append(amap.astype(np.float32))
            if out is not None:
                stem = Path(paths[k]).stem if paths[k] is not None else "image"
                save_overlay(out / f"{k:04d}_{stem}.png", rgb, scorer.normalize(amap), score=r.score,
                             normalized=r.normalized, anomalous=r.anomalous)
        same = len({m.shape for m in maps}) == 1
        return Predictions(np.array([r.score for r in results], np.float32),
                           np.array([r.normalized for r in results], np.float32),
                           np.array([r.anomalous for r in results], bool),
                           np.stack(maps) if same else maps, paths, scorer.threshold)

    def evaluate(self, data: str | os.PathLike | None = None, tasks: str | Sequence[str] | None = None,
                 per_defect: bool = False) -> dict:
        """Test metrics (image/pixel AUROC, F1, AP, AUPRO) of the trained model.

        Args:
            data: a dataset (MVTec root or dataset .yaml) to evaluate on; default the run's own tasks, as
                `edgead eval` (which also writes RUN/eval.json), or for a detector loaded from a `.pt` file the
                data it was trained on (recorded in the file by `save`).
            tasks: task names of `data` (default all).
            per_defect: also break the metrics down by defect type.

        Returns:
            {"metrics": {task: {metric: value}}, "average": {metric: value}, ...}.
        """
        from edgead.cl.evaluate_run import evaluate_run, evaluate_tasks
        from edgead.data.folder import open_stream

        scorer = self._require_model("evaluate")
        if data is None and self.run_dir is not None:
            return evaluate_run(self.run_dir, int(self._scorer_task_index()), per_defect)
        src = self._source()
        if data is None:
            if not src.get("data_root"):
                raise EdgeadError("Detector.evaluate: this checkpoint file does not say which data it was trained "
                                  "on; pass data=")
            data, tasks = src["data_root"], tasks or src.get("tasks")
        names = [tasks] if isinstance(tasks, str) else tasks
        out, average = evaluate_tasks(scorer.model, scorer.preprocess, open_stream(data, names),
                                      src.get("val_fraction", 0.1), src.get("seed", 0), per_defect, self.device)
        return {"tasks": list(out), "metrics": out, "average": average}

    def _source(self) -> dict:
        """What the model was trained on: data root, tasks, held-out share and seed (from the run, or from the
        checkpoint file's record)."""
        if self.results is not None:
            cfg = self.results.get("config", {})
            done = int(self.results.get("completed_tasks", 0))
            i = self._task_index if self._task_index is not None else done - 1
            return {"data_root": cfg.get("data_root"), "tasks": list(self.results.get("tasks", []))[: i + 1],
                    "val_fraction": cfg.get("train", {}).get("val_fraction", 0.1),
                    "seed": cfg.get("train", {}).get("seed", 0), "max_train": cfg.get("max_train")}
        return dict(self._meta)

    def _scorer_task_index(self) -> int:
        return self._task_index if self._task_index is not None else int(self.results["completed_tasks"]) - 1

    def export(self, out: str | os.PathLike, **options) -> dict:
        """Export the trained model for devices (as `edgead export`): int8 TFLite / ONNX, fidelity, manifest.

        Args:
            out: artifact folder.
            **options: the options of `edgead export`, by the same names (the fields of ExportOptions,
                edgead.options): formats (default: the device formats; one that drifts is left out with a
                warning, while formats named here must all pass), calibration, io, tflite_weights,
                max_image_auroc_drop, max_pixel_auroc_drop, allow_drift, data (the dataset, if it has moved or
                the detector was loaded from a `.pt` file), force, task.

        Returns:
            {"out": Path, "manifest": dict, "fidelity": dict}.
        """
        import warnings

        from edgead.export.pipeline import ExportOptions, export_run
        from edgead.options import check_known, names, take

        check_known(options, names(ExportOptions), "Detector.export")
        self._require_model("export")
        if self.run_dir is not None:
            options.setdefault("task", self._scorer_task_index())
            opts = ExportOptions(**take(ExportOptions, options))
            return export_run(self.run_dir, out, opts, warn=lambda m: warnings.warn(m, stacklevel=3))
        with tempfile.TemporaryDirectory(prefix="edgead-export-") as tmp:
            run = self._run_folder_from_checkpoint(Path(tmp), options.get("data"))
            opts = ExportOptions(**take(ExportOptions, options))
            return export_run(run, out, opts, warn=lambda m: warnings.warn(m, stacklevel=3))

    def _run_folder_from_checkpoint(self, folder: Path, data) -> Path:
        """A one-task run folder around a checkpoint file's model, so `export_run` can export it."""
        import json

        from edgead.data.folder import open_stream
        from edgead.engine.checkpoint import save_checkpoint

        src = self._source()
        data = data if data is not None else src.get("data_root")
        if data is None:
            raise EdgeadError("Detector.export: this detector was loaded from a checkpoint file that does not say "
                              "which data it was trained on; pass data= (calibration and the fidelity check need "
                              "its normal and test images)")
        tasks = src.get("tasks") or [t.name for t in open_stream(Path(data), None)]
        scorer = self._scorer
        save_checkpoint(folder / "checkpoints" / f"task_{len(tasks) - 1:02d}.pt", scorer.model, scorer.preprocess)
        res = {"config": {"detector": scorer.model.config.to_dict(), "data_root": str(Path(data).resolve()),
                          "max_train": src.get("max_train"),
                          "train": {"val_fraction": src.get("val_fraction", 0.1), "seed": src.get("seed", 0)}},
               "tasks": tasks, "completed_tasks": len(tasks), "metrics": {}, "memory": {}}
        (folder / "results.json").write_text(json.dumps(res))
        return folder

    # -- files -------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the trained model (weights, preprocessing, calibration) as one checkpoint file (atomic), with a
        note of the data it was trained on, so a detector loaded from the file can evaluate and export.

        Returns:
            The path written; `Detector.load(path)` reads it back.
        """
        from edgead.engine.checkpoint import save_checkpoint

        scorer = self._require_model("save")
        src = {k: (str(v) if k == "data_root" and v is not None else v) for k, v in self._source().items()}
        return save_checkpoint(path, scorer.model, scorer.preprocess, source=src)

    @classmethod
    def load(cls, path: str | os.PathLike, task: str | int | None = None, device: str = "cpu") -> Detector:
        """A trained detector from a run folder (checkpoint after `task`, default the last) or a checkpoint file.

        Args:
            path: run folder (`fit(out=...)`, `edgead train --out`) or a `.pt` file from `save`.
            task: for a run folder, the task (name or index) whose checkpoint to load.
            device: torch device.

        Returns:
            A Detector ready to predict, evaluate and export (from a `.pt` file: on the data it records, or on
            the `data=` given to evaluate/export).
        """
        from edgead.predict import HostDetector, checkpoint_of

        path = Path(path)
        if path.is_dir():
            _, i, _ = checkpoint_of(path, task)
            det = cls.__new__(cls)
            det.weights, det.device, det._task_index, det._meta = None, device, i, {}
            det._use_run(path, i)
            return det
        from edgead.engine.checkpoint import load_checkpoint

        model, pre, meta = load_checkpoint(path)
        det = cls.__new__(cls)
        det.config, det.weights, det.device, det.run_dir, det.results = model.config, None, device, None, None
        det._task_index = None
        det._meta = dict((meta or {}).get("source") or {})
        det._scorer = HostDetector(model, pre, device)
        return det

    def __repr__(self) -> str:
        c = self.config
        state = f"run {self.run_dir}" if self.run_dir else ("trained" if self._scorer else "not trained")
        return f"Detector({c.model}/{c.backbone}, {c.image_size} px, levels {list(c.levels)}; {state})"
