"""The device: a verified artifact folder, any image in, score / map / decision out, int8 latents kept.

``Device`` reads everything it needs from the manifest (graph files, preprocessing, input quantisation,
latent quantisation, threshold): nothing about the model is hard-coded here, so a new export is picked up by
pointing a device at the new folder. The replay buffer (``attach_buffer``) keeps the trunk's own int8 output
(codec int8-device, no second quantisation), by reservoir sampling within a task, inside a byte budget shared
by all tasks, and is written atomically to its flash path whenever it changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from firmware_sim.atomic import remove_stale_temps
from firmware_sim.buffer_lock import BufferLock
from firmware_sim.buffer_log import resolved
from firmware_sim.edgetpu import edgetpu_graph_files
from firmware_sim.errors import UserError
from firmware_sim.keep_policy import KeepPolicy
from firmware_sim.manifest import Manifest, load_manifest
from firmware_sim.manifest_check import check_against_graphs
from firmware_sim.preprocess import load_rgb, load_rgb_from
from firmware_sim.replay_buffer import MAX_TASK_ID, LoadReport, ReplayBuffer
from firmware_sim.runtime import DeployedDetector, edgetpu_delegate, image_feed, open_runner
from firmware_sim.sizes import format_size

FORMAT_PREFERENCE = ("tflite-int8", "onnx-int8", "onnx", "openvino-int8", "openvino")
DELEGATES = ("edgetpu",)


@dataclass
class Result:
    score: float  # the map's maximum
    normalized: float  # 0..1, the threshold at 0.5 (min-max of the calibration scores, as anomalib)
    anomalous: bool  # score > the manifest's threshold
    map: np.ndarray  # (S, S) float32
    latency_ms: float  # preprocessing + graphs + distance (+ buffer update)
    stages_ms: dict[str, float]
    stored: bool | None = None  # kept in the replay buffer (None: no buffer)
    pixels: np.ndarray | None = None  # (S, S, 3) uint8: what the model saw
    not_kept: str | None = None  # why the keep policy left the frame out of the buffer (None: offered to it)

    def to_json(self, path: str | None = None) -> dict:
        return {"path": path, "score": self.score, "normalized_score": self.normalized,
                "decision": "anomalous" if self.anomalous else "normal", "latency_ms": round(self.latency_ms, 3),
                **({"buffered": self.stored} if self.stored is not None else {}),
                **({"not_kept": self.not_kept} if self.not_kept is not None else {})}


def image_rgb(image: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
    """Any image (path, PIL image of any mode, uint8 array) -> an RGB PIL image; bad input is a UserError."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise UserError(f"image array {image.dtype} {image.shape}: expected uint8 (H, W) or (H, W, 3)")
        image = Image.fromarray(image)
    return load_rgb_from(image) if isinstance(image, Image.Image) else load_rgb(image)


def image_pixels(image: str | os.PathLike | Image.Image | np.ndarray, preprocess) -> np.ndarray:
    """Any image -> its model inputs (K, S, S, 3) uint8 as ``preprocess`` says (K = 1 unless tile mode)."""
    return preprocess.views(image_rgb(image))


def normalize_score(score: float | np.ndarray, lo: float | None, hi: float | None,
                    thr: float) -> float | np.ndarray:
    """Scores (or a map) -> 0..1 with the threshold ``thr`` at 0.5: min-max over the calibration range lo..hi
    (without a usable range: 0.5 * score / thr)."""
    if lo is None or hi is None or not np.isfinite([lo, hi, thr]).all() or hi <= lo:
        v = 0.5 * np.asarray(score) / thr if thr and np.isfinite(thr) else np.full_like(score, np.nan)
    else:
        v = (np.asarray(score) - thr) / (hi - lo) + 0.5
    v = np.clip(v, 0.0, 1.0)
    return float(v) if np.ndim(v) == 0 else v.astype(np.float32)


def _check_edgetpu(manifest: Manifest, fmt: str) -> None:
    """The Edge TPU runs full-int8 static-shape TFLite only: refuse anything else before loading the library."""
    if fmt != "tflite-int8":
        raise UserError(f"--delegate edgetpu needs the tflite-int8 format (asked for {fmt!r}); export with "
                        "`edgead export --format tflite-int8`")
    graphs = manifest.data["formats"][fmt]["graphs"]
    for name, g in graphs.items():
        for t in [*g["inputs"], *g["outputs"]]:
            if t["dtype"] not in ("int8", "uint8") or t.get("quantization") is None or t["shape"][0] != 1 \
                    or any(int(d) <= 0 for d in t["shape"]):
                raise UserError(f"--delegate edgetpu: {g['file']} ({name}) is not a full-int8 static-shape model "
                                f"(tensor {t['name']}: {t['dtype']} {t['shape']}); re-export with "
                                "`edgead export --format tflite-int8` (int8 or uint8 I/O) and compile it with "
                                "edgetpu_compiler")


class Device:
    """One exported model on a device: load it, score frames, keep its int8 latents in a replay buffer.

    Args:
        artifact_dir: a folder written by `edgead export` (its manifest is verified: schema, sizes, sha256).
        format: tflite-int8 | onnx-int8 | onnx | openvino-int8 | openvino (default: the first of these that was
            exported; each runs with its runtime from firmware_sim.runtimes).
        threads: interpreter threads (default: the interpreter's choice).
        delegate: "edgetpu" to run the TFLite model on a Coral Edge TPU (needs libedgetpu).
        xnnpack: TFLite only; False uses the built-in int8 kernels without the XNNPACK delegate.

    `infer(image)` returns the score, the normalised score, the decision and the anomaly map of one image;
    `attach_buffer(path, budget, task)` makes every later `infer` offer its int8 trunk latent to a replay
    buffer file; `trunk_latents(images)` returns those latents with their scale and zero point.
    """

    def __init__(self, artifact_dir: str | os.PathLike, format: str | None = None, threads: int | None = None,
                 delegate: str | None = None, xnnpack: bool = True):
        self.manifest = load_manifest(artifact_dir)  # schema + size + sha256 of every file, or UserError
        have = self.manifest.formats
        if format is None:
            format = next((f for f in FORMAT_PREFERENCE if f in have), None)
        if format not in have:
            raise UserError(f"{artifact_dir}: format {format!r} not exported here (have {', '.join(have)})")
        if threads is not None and int(threads) < 1:
            raise UserError(f"--threads {threads}: expected 1 or more")
        if delegate is not None and delegate not in DELEGATES:
            raise UserError(f"--delegate {delegate!r}: expected one of {', '.join(DELEGATES)}")
        self.format, self.threads, self.delegate = format, threads, delegate
        graphs = self.manifest.data["formats"][format]["graphs"]
        self.path = "trunk+head" if "trunk" in graphs and "head" in graphs else "full"
        if delegate == "edgetpu":
            _check_edgetpu(self.manifest, format)
            delegates = [edgetpu_delegate()]
        else:
            delegates = None
        names = ["trunk", "head"] if self.path == "trunk+head" else ["full"]
        # The Edge TPU runs the compiled copies recorded beside the originals (firmware_sim.edgetpu).
        self.graph_files = (edgetpu_graph_files(self.manifest, format, names) if delegate == "edgetpu" else
                            {name: self.manifest.graph_path(format, name) for name in names})
        # The format's runtime from the table in firmware_sim.runtimes (LiteRT, ONNX Runtime, OpenVINO).
        runners = {name: open_runner(format, self.graph_files[name], threads, delegates, xnnpack) for name in names}
        # Shapes and quantisation come from the interpreter: a manifest that says otherwise is refused.
        check_against_graphs(self.manifest, format, runners)
        # The score post-processing the host calibrated the threshold with (the manifest's; older ones: max).
        self.detector = DeployedDetector(runners, self.manifest.levels, self.manifest.image_size,
                                         self.manifest.score_post)
        self.preprocess = self.manifest.preprocess
        self.task_name: str | None = None
        self.use_task(None)
        self.buffer: ReplayBuffer | None = None
        self.buffer_path: Path | None = None
        self.buffer_report: LoadReport | None = None
        self._lock: BufferLock | None = None
        self.task_id = 0
        self.keep = KeepPolicy()  # which frames enter the buffer (firmware_sim.keep_policy)
        self._sample_id = 0
        self._lat_q: tuple | None = None  # (scale, zero point, dtype) of the latent, read on first use

    def use_task(self, name: str | None) -> None:
        """Decide with task ``name``'s own threshold and score range (None: the task-agnostic ones)."""
        cal = self.manifest.calibration(name)
        self.task_name = name
        self.threshold = float(cal["threshold"]) if cal.get("threshold") is not None else float("nan")
        self._lo, self._hi = cal.get("score_min"), cal.get("score_max")

    # -- inference ---------------------------------------------------------------------------------------
    @property
    def interpreter(self) -> str:
        return next(iter(self.detector.runners.values())).module

    def pixels(self, image: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
        """Any image (path, PIL image of any mode, uint8 array) -> its views (K, S, S, 3) uint8 as the manifest
        says (K = 1 unless the resize mode is tile)."""
        return image_pixels(image, self.preprocess)

    def normalize(self, score: float | np.ndarray) -> float | np.ndarray:
        """Scores (or a map) -> 0..1 with the threshold at 0.5: min-max of the calibration scores."""
        return normalize_score(score, self._lo, self._hi, self.threshold)

    def infer(self, image: str | os.PathLike | Image.Image | np.ndarray) -> Result:
        t0 = time.perf_counter()
        img = image_rgb(image)
        x = self.preprocess.views(img)
        clock: dict[str, float] = {"preprocess": time.perf_counter() - t0}
        maps, raws, stored, not_kept = [], [], None, None
        for k in range(len(x)):  # one view, or the tiles of a long image
            amap, raw = self.detector.run_one(x[k:k + 1], self.path, clock)
            maps.append(amap[0])
            raws.append(raw)
        frame, score = self.preprocess.merge(np.stack(maps), img.size, self.detector.post)
        if self.buffer is not None:  # after the decision: the keep policy looks at it
            t1 = time.perf_counter()
            not_kept = self.keep.refuses(score, self.threshold)
            stored = False if not_kept else any([self._keep(raw) for raw in raws])
            clock["buffer"] = time.perf_counter() - t1
        return Result(score, self.normalize(score), bool(score > self.threshold), frame,
                      1000.0 * (time.perf_counter() - t0), {k: 1000.0 * v for k, v in clock.items()}, stored,
                      x[0] if len(x) == 1 else self.preprocess.frame_uint8(img), not_kept)

    # -- replay buffer ---------------------------------------------------------------------------------------
    def latent_quantization(self) -> tuple[np.ndarray, np.ndarray, str]:
        """(scale, zero point, how) for the int8 latent: the format's own, else the tflite-int8 export's."""
        lat = self.manifest.data.get("latent")
        if not lat:
            raise UserError(f"{self.manifest.root}: a {self.manifest.model} model has no trunk latent to keep; "
                            "a replay buffer needs a PaSTe export")
        quants = lat.get("quantization", {})
        q = quants.get(self.format) or quants.get("tflite-int8")
        if q is None:
            raise UserError(f"{self.manifest.root}: the manifest has no latent quantisation for {self.format} or "
                            "tflite-int8; export with --format tflite-int8 to keep an int8 device buffer")
        own = quants.get(self.format) is not None
        dtype = self.detector.runners["trunk"].outputs["latent"]["dtype"] if own else "float32"
        return np.asarray(q["scale"], np.float32), np.asarray(q["zero_point"], np.int32), dtype

    def _as_stored(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The trunk's raw output for one image -> (int8 CHW latent as the buffer stores it, its zero point)."""
        scale, zp, dtype = self._lat_q
        z = raw[0]
        if self.detector.runners["trunk"].layout == "NHWC":
            z = np.moveaxis(z, -1, 0)  # the buffer holds CHW
        if dtype == "int8":
            return np.ascontiguousarray(z), zp
        if dtype == "uint8":  # --io uint8: the same numbers shifted by 128
            return (z.astype(np.int16) - 128).astype(np.int8), zp - 128
        # A float format: quantise with the int8 export's parameters, clipped like the interpreter.
        s = scale.reshape(-1, 1, 1) if scale.size > 1 else scale
        p = zp.reshape(-1, 1, 1) if zp.size > 1 else zp
        return np.clip(np.rint(z / s) + p, -128, 127).astype(np.int8), zp

    def trunk_latents(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 images (N, S, S, 3) -> (int8 latents (N, C, H, W) exactly as a device buffer keeps them,
        scale, zero point): the trunk alone, for collecting replay data without scoring."""
        if self.path != "trunk+head":
            raise UserError(f"{self.manifest.root}: {self.manifest.model} has no trunk latent (full graph only)")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"images {images.dtype} {images.shape}: expected uint8 (N, S, S, 3)")
        self._lat_q = self._lat_q or self.latent_quantization()
        trunk = self.detector.runners["trunk"]
        out, zp = [], self._lat_q[1]
        for i in range(len(images)):
            q, zp = self._as_stored(trunk(**image_feed(trunk, self.pixels(images[i])))["latent"])
            out.append(q)
        shape = (0, *self.manifest.data["latent"]["shape_chw"])
        return (np.stack(out) if out else np.zeros(shape, np.int8)), self._lat_q[0], zp

    def _keep(self, raw: np.ndarray | None) -> bool:
        if raw is None:
            raise UserError("this model has no trunk latent (full graph only): nothing to keep in a buffer")
        q, zp = self._as_stored(raw)
        stored = self.buffer.add_quantized(self.task_id, q, self._lat_q[0], zp, self._sample_id)
        self._sample_id += 1
        if stored:  # one record appended (firmware_sim.buffer_log), durable before the frame is reported
            self.buffer.commit(self.buffer_path)
        return stored

    def attach_buffer(self, path: str | os.PathLike, budget: int | str | None = None, task: int | None = None,
                      seed: int = 0, shrink: bool = False, wait: bool = False,
                      warn: Callable[[str], None] | None = None, task_name: str | None = None,
                      keep: str | KeepPolicy = "normal") -> ReplayBuffer:
        """Open (or create) the buffer file at ``path`` and hold its lock until ``detach_buffer``.

        Args:
            task: the task id of what this device sees next (default: the newest task in the file, else 0).
            task_name: the product's name: its records go to the buffer task of that name; a name the buffer
                does not know yet names ``task`` if that id is unnamed there, else a new id.
            keep: which frames are offered to the buffer: normal (decided normal), all, margin:X (scoring
                below X times the threshold); see firmware_sim.keep_policy.
            shrink: allow a ``budget`` below the file's (records that no longer fit are evicted and counted in
                ``buffer_report.evicted``); without it a smaller budget is refused with the numbers.
            wait: if another process holds the buffer, wait for it instead of failing.
            warn: receives notes (waiting, stale temporary files removed).
        Returns:
            the buffer, also ``self.buffer``.
        """
        if self.path != "trunk+head":
            raise UserError(f"{self.manifest.root}: {self.manifest.model} has no trunk latent; a replay buffer "
                            "needs a PaSTe export (trunk + head)")
        if task is not None and not 0 <= int(task) <= MAX_TASK_ID:
            raise UserError(f"--task {task}: expected a task id in 0..{MAX_TASK_ID}")
        self._lat_q = self.latent_quantization()
        self.keep = KeepPolicy.parse(keep)
        # One buffer, one lock, whatever the path it is reached by: a symlink and its target share both.
        path = resolved(path)
        self.detach_buffer()
        lock = BufferLock(path, wait=wait, notify=warn).acquire()
        try:
            self._open_locked(path, budget, task, seed, shrink, warn, task_name)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        return self.buffer

    def detach_buffer(self) -> None:
        """Stop keeping latents, write the count of frames offered but not stored, release the buffer's lock."""
        if self.buffer is not None and self._lock is not None:
            try:
                self.buffer.commit(self.buffer_path)
            except (OSError, UserError):
                pass  # every stored record is durable already; only that count is lost (the reservoir then
                # weighs the next frames as if fewer had come before)
        if self._lock is not None:
            self._lock.release()
        self._lock, self.buffer = None, None

    def close(self) -> None:
        self.detach_buffer()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_locked(self, path: Path, budget, task, seed: int, shrink: bool, warn, task_name=None) -> None:
        stale = remove_stale_temps(path)  # safe: the lock keeps every other writer of this file out
        if stale and warn:
            warn(f"{path}: removed {len(stale)} temporary file(s) left by interrupted saves")
        shape = tuple(self.manifest.data["latent"]["shape_chw"])
        if path.exists():
            buf, report = open_buffer(path, budget, shrink=shrink, expect=("int8-device", shape))
            if buf.codec.name != "int8-device":
                raise UserError(f"{path}: codec {buf.codec.spec}; a device keeps int8-device buffers")
            if buf.shape is not None and tuple(buf.shape) != shape:
                raise UserError(f"{path}: holds latents of shape {buf.shape}, this model's are {shape} "
                                "(a different backbone or image size); use another buffer file")
        else:
            if budget is None:
                raise UserError(f"{path}: no buffer file yet; give --budget (e.g. 256KB) to create one")
            buf, report = ReplayBuffer(budget, "int8-device", seed=seed, latent_shape=shape, append=True), None
        self.task_id = int(task) if task is not None else max(buf.tasks, default=0)
        if task_name is not None:
            self.task_id = named_task_id(buf, task_name, task, len(self.manifest.tasks))
            buf.name_task(self.task_id, task_name)
        self._sample_id = buf.stats()["offered_per_task"].get(self.task_id, 0)
        if not buf.set_append(True) and warn:
            warn(f"{path}: no room for an append log without evicting records, so every buffered frame rewrites "
                 "the whole file; give it a larger budget (buffer import --budget) to append instead")
        buf.ensure_task(self.task_id)
        self.buffer, self.buffer_path, self.buffer_report = buf, path, report
        buf.commit(path)  # the file exists (and fits its budget) from the start; a clean one is not rewritten


def named_task_id(buf: ReplayBuffer, name: str, preferred: int | None, model_tasks: int) -> int:
    """The buffer task id for product ``name``: the one that carries it, else ``preferred`` (the model's
    index for it) if that id has no name yet, else the first id after the model's tasks and the buffer's."""
    have = buf.task_id_of(name)
    if have is not None:
        return have
    names = buf.task_names()
    if preferred is not None and int(preferred) not in names:
        return int(preferred)
    return max([model_tasks - 1, *buf.tasks, *names]) + 1


def open_buffer(path: str | os.PathLike, budget: int | str | None = None, shrink: bool = True,
                expect: tuple[str, tuple[int, ...]] | None = None) -> tuple[ReplayBuffer, LoadReport]:
    """Load a buffer file, refusing a missing one with a clear message.

    Args:
        budget: overrides the file's budget.
        shrink: False refuses (UserError with the numbers) a budget below the file's, or any load that would
            evict intact records; True allows it and the report counts the evicted records.
        expect: (codec, latent shape) to salvage records with if the header is lost (see ReplayBuffer.load).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no replay buffer file here")
    buf, report = ReplayBuffer.load(path, budget, expect=expect)
    smaller = report.header_budget is not None and buf.budget_bytes < report.header_budget
    if not shrink and (smaller or report.evicted):
        held = report.kept + report.evicted
        was = (f"its budget is {format_size(report.header_budget)}" if report.header_budget is not None
               else "its header is lost")
        why = (f"--budget {format_size(buf.budget_bytes)} is below the file's" if smaller else
               f"its header's budget {format_size(buf.budget_bytes)} is below what it holds (a damaged file or "
               "another tool's)")
        raise UserError(f"{path}: {why}: {was}; it holds {held} record(s) in {format_size(report.file_bytes)}, and "
                        f"{report.evicted} of them would be deleted. Pass --shrink to shrink it, or a --budget of "
                        f"at least {format_size(max(report.file_bytes, report.header_budget or 0))}")
    return buf, report
