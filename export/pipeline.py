"""`edgead export`: a run's checkpoint -> device artifacts, a fidelity report and a verified manifest.

Order: check every option and input (formats, run, checkpoint vs run, data, calibration count, output
folder) before any work; build everything in a hidden temporary sibling of ART_DIR; measure fidelity;
write manifest.json last; rename the folder into place. An interrupted or failed export therefore never
leaves a folder at ART_DIR (and the temporary one is removed).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
from edgead.export import arm64_check as arm64
from edgead.export.drift_advice import ExportContext, drift_message
from edgead.export.fidelity import Reference, Tolerance, evaluate_format
from edgead.export.formats import EDGETPU, FILE_SUFFIX, FormatExport, export_format, parse_formats
from edgead.export.graphs import feature_names
from edgead.export.tflite import ACTIVATIONS, GRANULARITIES

from edgead.cl.results import read_results
from edgead.console import progress
from edgead.data.folder import open_stream
from edgead.data.loading import LoadedSplit
from edgead.engine.checkpoint import load_checkpoint
from edgead.engine.tensors import compute_latents, predict_images
from edgead.errors import EdgeadError
from edgead.models.cost import detector_cost
from edgead.models.teacher_student import CALIBRATION_STATS, DetectorConfig, TeacherStudent
from edgead.options import option
from edgead.outputs import check_out, check_writable, public_mkdtemp, recheck, writing
from firmware_sim.atomic import atomic_write_json
from firmware_sim.digest import sha256_file
from firmware_sim.edgetpu import COMPILER, add_edgetpu, find_compiler, manual_steps
from firmware_sim.manifest import MANIFEST_NAME, load_manifest, write_manifest
from firmware_sim.outputs import clean_partials, partial_prefix, publish, write_marker
from firmware_sim.preprocess import Preprocess

MIN_CALIBRATION = 8
DEFAULT_CALIBRATION = 32
FIDELITY_NAME = "fidelity.json"
# What a device runs: the Pi (LiteRT int8 or ONNX Runtime) and, compiled from tflite-int8, the Coral.
DEVICE_FORMATS = ("tflite-int8", "onnx", "onnx-int8")
_TOOLS = ("edgead", "torch", "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "onnx", "onnxruntime",
          "onnxscript", "openvino", "nncf", "numpy")


class ExportDrift(EdgeadError):
    """A format's accuracy fell past the tolerance and --allow-drift was not given."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result  # manifest (unpublished) and fidelity, for a summary


@dataclass
class ExportOptions:
    """What `edgead export` / `Detector.export` write; each field is also their option (edgead.options)."""

    # None: the formats a device uses (DEVICE_FORMATS that the backbone supports); one of them that drifts is
    # left out with a warning. Formats asked for by name keep the strict gate.
    formats: list[str] | None = option(None, parse=parse_formats, default_text=",".join(DEVICE_FORMATS),
                                       cli_name="format",
                                       help="Comma-separated: tflite-int8 (mcunet-in3 only), onnx, onnx-int8, "
                                            "openvino (fp32 IR), openvino-int8 (NNCF int8 IR), edgetpu (tflite-int8 compiled for the Coral Edge TPU; needs "
                                            "edgetpu_compiler on PATH). Default: the device formats, each left out "
                                            "with a warning if it drifts; formats named here must all pass.")
    task: int | None = option(None, help="Checkpoint after this task (index; default: the last).")
    calibration: int = option(DEFAULT_CALIBRATION, min=1, help="Normal training images used to calibrate the int8 "
                              "ranges (seeded; all there are when fewer exist; a warning below 8).")
    io: str = option("int8", choices=("int8", "uint8"), help="TFLite input and output type (int8 keeps the latent "
                     "byte-compatible with the replay buffer).")
    tflite_weights: str = option("per-channel", choices=GRANULARITIES, help="int8 weight scales: mixed = "
                                 "per-tensor 1x1 convs (about 7% smaller, costs pixel AUROC; see "
                                 "benchmarks/study_size.py).")
    tflite_activations: str = option("int8", choices=ACTIVATIONS, help="TFLite activation width: int16 (int8 "
                                     "weights, int16 activations and I/O) rounds 256x finer, so x86 and ARM kernels "
                                     "agree on the score; not for the Edge TPU, slower (docs/device-runtimes.md).")
    tolerance: Tolerance = option(factory=Tolerance, nested=True, help="The fidelity gate.")
    allow_drift: bool = option(False, help="Publish even when a format's AUROC falls past the tolerance.")
    data_root: Path | None = option(None, name="data", parse=Path,
                                    help="Dataset root, if it has moved since training.")
    force: bool = option(False, help="Replace a non-empty output folder.")
    # The host's int8 kernels are not a Pi's: with this, every format also runs on ARM's own kernels (an emulated
    # Debian arm64 root, export/arm64_check.py) and is judged by the same tolerance (docs/device-runtimes.md).
    arm64_check: bool = option(False, help="Also run the formats on arm64 kernels (scripts/arm64_check.sh: qemu-user "
                               "+ a cached Debian arm64 root; needs root) and hold that run to the same fidelity "
                               "gate.")
    arm64_images: int | None = option(None, min=1, help="With --arm64-check: at most N test images on ARM "
                                      "(stratified; emulation is slow). Default: all.")


@dataclass
class Run:
    root: Path
    results: dict
    task_index: int
    checkpoint: Path
    model: TeacherStudent
    pre: Preprocess


def load_run(run_dir: str | os.PathLike, task: int | None) -> Run:
    root = Path(run_dir)
    res_path = root / "results.json"
    res = read_results(root)
    try:
        det = DetectorConfig.from_dict(res["config"]["detector"])
        done, tasks = int(res["completed_tasks"]), list(res["tasks"])
        for keys in (("data_root",), ("train", "val_fraction"), ("train", "seed")):  # needed by load_data
            node = res["config"]
            for k in keys:
                node = node[k]
    except (KeyError, TypeError, ValueError) as e:
        raise EdgeadError(f"{res_path}: unreadable or incomplete run results ({type(e).__name__}: {e})") from None
    if done < 1:
        raise EdgeadError(f"{root}: no task completed yet, nothing to export")
    i = done - 1 if task is None else task
    if not 0 <= i < done:
        raise EdgeadError(f"--task {task}: this run completed tasks 0..{done - 1} ({', '.join(tasks[:done])})")
    ckpt = root / "checkpoints" / f"task_{i:02d}.pt"
    model, pre, _ = load_checkpoint(ckpt, expect_model=det.model, expect_backbone=det.backbone)
    if model.config != det:
        diff = sorted(k for k, v in det.to_dict().items() if model.config.to_dict().get(k) != v)
        raise EdgeadError(f"{ckpt}: checkpoint does not match the run's detector configuration (differs in {diff})")
    if pre.image_size != det.image_size:
        raise EdgeadError(f"{ckpt}: preprocessing size {pre.image_size} differs from the model's {det.image_size}")
    return Run(root, res, i, ckpt, model, pre)


def load_data(run: Run, data_root: Path | None) -> tuple[np.ndarray, LoadedSplit, list[str]]:
    """(normal training images of the run's tasks so far, their held-out test split, task names)."""
    from edgead.cl.sources import SourcedStream, run_sources

    cfg = run.results["config"]
    tasks = run.results["tasks"][: run.task_index + 1]
    try:
        if data_root is None:  # each task from where it was read (a run grown by `edgead learn`; device tasks
            stream = SourcedStream(tasks, run_sources(run.results)[: run.task_index + 1])  # have no images)
        else:
            stream = open_stream(Path(data_root), tasks, cfg.get("max_train"))
    except EdgeadError as e:
        raise EdgeadError(f"{e} (the run's data is needed for calibration and the fidelity check; pass --data "
                          f"if it has moved)") from None
    train, test = [], []
    for task in stream:
        d = task.load(run.pre, val_fraction=cfg["train"]["val_fraction"], seed=cfg["train"]["seed"])
        train.append(d.train.images)
        test.append(d.test)
    return np.concatenate(train), LoadedSplit.concat(test), tasks


def select_calibration(pool: np.ndarray, n: int, seed: int, warn: Callable[[str], None] = lambda m: None
                       ) -> np.ndarray:
    """n normal training images (all of them, with a warning, when fewer exist), drawn without replacement with
    a fixed seed. Fewer than MIN_CALIBRATION images are used with a warning: the fidelity gate then says
    whether the ranges they give are good enough."""
    if n < 1:
        raise EdgeadError(f"--calibration {n}: expected a number of normal images, 1 or more "
                          f"(default {DEFAULT_CALIBRATION})")
    if len(pool) == 0:
        raise EdgeadError("no normal training images in this run's tasks to calibrate the int8 ranges with")
    if n > len(pool):
        warn(f"--calibration {n}: only {len(pool)} normal training images in this run's tasks; calibrating "
             f"with all {len(pool)}")
        n = len(pool)
    if n < MIN_CALIBRATION:
        warn(f"calibrating the int8 ranges on {n} image(s), fewer than {MIN_CALIBRATION}: they may not cover "
             f"the images the device sees; check the fidelity table")
    idx = np.sort(np.random.default_rng([seed, 0x5CA1E]).choice(len(pool), n, replace=False))
    return pool[idx]


def reference(model: TeacherStudent, pre: Preprocess, test: LoadedSplit) -> Reference:
    maps, scores = predict_images(model, test.images, pre)
    lat = compute_latents(model, test.images, pre).numpy() if model.trunk is not None else None
    return Reference(maps, scores, lat)


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def build_manifest(run: Run, opts: ExportOptions, exports: dict[str, FormatExport], folder: Path, calib_n: int,
                   pool_n: int, seed: int, tasks: list[str], passed: bool) -> dict:
    model, pre, cfg = run.model, run.pre, run.model.config
    cost = detector_cost(model)
    formats = {}
    for fmt, fx in exports.items():
        size = {n: (folder / g["file"]).stat().st_size for n, g in fx.graphs.items()}
        paths = {"full": size["full"]}
        if "trunk" in size:
            paths = {"trunk+head": size["trunk"] + size["head"], **paths}
        formats[fmt] = {"graphs": fx.graphs, "paths": list(paths), "bytes": paths, **fx.notes}
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": cfg.model, "backbone": cfg.backbone, "levels": list(cfg.levels), "bootstrap": cfg.bootstrap,
        "detector": cfg.to_dict(),
        "input": {
            "image_size": cfg.image_size, "preprocess": pre.to_dict(),
            "pixels": "RGB uint8 (K, S, S, 3) views from Preprocess.views (K > 1 only for resize_mode tile), "
                      "one graph call per view, per-image map and score from Preprocess.merge; every graph "
                      "normalises with the preprocess mean/std inside, so the runtime feeds pixels (NCHW float32 "
                      "0..255 for ONNX)",
            "resize_mode": pre.resize_mode,
            "normalisation": "in_graph",
            "quantization": {fmt: fx.graphs["full"]["inputs"][0]["quantization"] for fmt, fx in exports.items()},
        },
        "latent": None if model.trunk is None else {
            "shape_chw": list(model.latent_shape()), "graph": "trunk", "output": "latent",
            "replay_codec": "int8-device",
            "note": "tflite-int8: keep the trunk's int8 output as is (NHWC; CHW in the buffer) with this scale and "
                    "zero point, and feed it to the head, whose input has the same parameters (with --io uint8, "
                    "value - 128 and zero point - 128 give the int8 form)",
            "quantization": {fmt: next(o for o in fx.graphs["trunk"]["outputs"] if o["name"] == "latent")
                             ["quantization"] for fmt, fx in exports.items()},
        },
        "anomaly_map": {
            "computed_in": "runtime", "function": "firmware_sim.anomaly_map.anomaly_map",
            "features": feature_names(cfg.levels), "out_size": cfg.image_size,
            "definition": "per level: L2-normalise teacher and student over channels, 0.5 * squared distance; "
                          "bilinear upsample (align_corners=False) to out_size; multiply levels; then `score` "
                          "(firmware_sim.anomaly_map.ScorePost): optional Gaussian blur, score = max or top-k mean",
            "score": cfg.score,
        },
        "calibration": {k: _finite(getattr(model.calibration, k)) for k in CALIBRATION_STATS}
        | {"extra": model.calibration.described()},
        "task_calibration": task_calibration(model.calibration),
        "quantization_calibration": {"images": calib_n, "available": pool_n, "seed": seed,
                                     "source": f"normal training images (validation split held out) of {tasks}"},
        "cost": {k: cost[k] for k in ("params", "macs", "latent_shape", "latent_bytes",
                                      "peak_activation_bytes_int8", "architecture_bytes")},
        "formats": formats,
        "fidelity": {"file": FIDELITY_NAME, "within_tolerance": passed, "allow_drift": opts.allow_drift,
                     "tolerance": asdict(opts.tolerance)},
        "source": {"run": str(run.root.resolve()), "task_index": run.task_index, "tasks": tasks,
                   "checkpoint": run.checkpoint.name, "checkpoint_sha256": sha256_file(run.checkpoint)},
        "tools": tool_versions(),
    }


def task_calibration(cal) -> dict | None:
    """The manifest's per-task thresholds (firmware_sim ``run --task NAME``), in task order; None for a run
    trained before per-task calibration."""
    per = cal.per_task
    if not per:
        return None
    return {"tasks": list(per), "per_task": {t: {k: _finite(c[k]) for k in CALIBRATION_STATS if k in c}
                                             for t, c in per.items()},
            "task_agnostic": "the top-level 'calibration': " + str(cal.rule or "as fitted")}


def _space_needed(run: Run, formats: list[str]) -> tuple[int, int]:
    """(largest file, all files) an export writes, in bytes. The float ONNX full graph holds every weight in
    fp32 (int8 graphs about a quarter of that); per format, trunk + head + full hold the weights about twice,
    counted at fp32 size for all formats: a generous estimate."""
    fp32 = sum(p.numel() * 4 for p in run.model.parameters())
    return (fp32 if "onnx" in formats else fp32 // 4), 2 * len(formats) * fp32


def leave_out_drifted(fidelity: dict, also: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The default export's rule: the formats that drifted (on the host, or named in ``also``: drift on ARM)
    move from fidelity["formats"] to fidelity["left_out"] (returned), unless every format drifted (then none is
    left out and the export fails as a named one does: publishing nothing silently would help no one)."""
    drifted = [f for f, per in fidelity["formats"].items() if f in also or any(r["drift"] for r in per.values())]
    if not drifted or len(drifted) == len(fidelity["formats"]):
        return []
    fidelity["left_out"] = {f: fidelity["formats"].pop(f) for f in drifted}
    return drifted


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, opts: ExportOptions,
               log: Callable[[str], None] = lambda m: None, warn: Callable[[str], None] | None = None) -> dict:
    """Export a run's checkpoint for devices, check every format's fidelity, and publish the artifact folder.

    Args:
        run_dir: a run folder written by `edgead train` / `run_stream` (results.json, checkpoints/).
        out: the artifact folder to create (built elsewhere and renamed into place at the end; a non-empty
            folder is refused unless ``opts.force``).
        opts: formats (tflite-int8, onnx, onnx-int8), checkpoint task, calibration images, I/O type, weight
            granularity, the fidelity tolerance and whether drift may be published.
        log: called with one line of progress text at a time.
        warn: called with warnings (default: ``log`` with a 'warning:' prefix).

    Returns:
        {'manifest': the manifest written (files with sizes and sha256, preprocessing, graphs, threshold),
         'fidelity': every format against the float model on held-out test images, 'out': Path}.

    Raises:
        ExportDrift: a format's image or pixel AUROC fell by more than the tolerance (nothing is published).
        EdgeadError: bad input (no run, unsupported format for the backbone, too few calibration images, ...).
    """
    warn = warn or (lambda m: log(f"warning: {m}"))
    explicit = opts.formats is not None  # named formats must all pass; default ones may be left out
    formats = parse_formats(opts.formats) if explicit else list(DEVICE_FORMATS)
    # 'edgetpu': the tflite-int8 graphs, compiled by edgetpu_compiler; checked before any work.
    edgetpu = EDGETPU in formats
    formats = [f for f in formats if f != EDGETPU]
    if edgetpu and "tflite-int8" not in formats:
        formats.insert(0, "tflite-int8")
    if opts.io not in ("int8", "uint8"):
        raise EdgeadError(f"--io {opts.io!r}: expected int8 or uint8")
    if opts.tflite_weights not in GRANULARITIES:
        raise EdgeadError(f"--tflite-weights {opts.tflite_weights!r}: expected one of {', '.join(GRANULARITIES)}")
    given = Path(out)
    # The output-folder rule (firmware_sim.outputs): never the run or the data, an existing folder only if it
    # is an artifact and --force; every later step uses the resolved folder.
    out = check_out(given, kind="artifact", inputs=[run_dir, opts.data_root], force=opts.force)
    run = load_run(run_dir, opts.task)
    if not explicit and run.model.config.backbone != "mcunet-in3":
        formats = [f for f in formats if f != "tflite-int8"]  # the Keras mirror exists for mcunet-in3 only
    if "tflite-int8" in formats and run.model.config.backbone != "mcunet-in3":
        raise EdgeadError(f"tflite-int8 needs the Keras mirror, which exists for mcunet-in3 only (this run is "
                          f"{run.model.config.backbone}); use --format onnx,onnx-int8")
    if edgetpu and find_compiler() is None:
        t = FILE_SUFFIX["tflite-int8"]
        groups = [[f"full{t}"]] if run.model.trunk is None else [[f"trunk{t}", f"head{t}"], [f"full{t}"]]
        raise EdgeadError(f"--format edgetpu: {COMPILER} is not on PATH. Export with --format "
                          f"{','.join(formats)} now, then " + manual_steps(out, groups))
    if edgetpu and opts.tflite_activations != "int8":
        raise EdgeadError(f"--tflite-activations {opts.tflite_activations}: the Edge TPU runs int8 activations only; "
                          "export edgetpu with --tflite-activations int8")
    if opts.arm64_check:
        arm64.require_tools()  # before any work: the message names the apt commands
    largest, total = _space_needed(run, formats)
    check_writable(out, what="--out", largest_file=largest, total_bytes=total)
    pool, test, tasks = load_data(run, opts.data_root)
    seed = int(run.results["config"]["train"]["seed"])
    calib = select_calibration(pool, opts.calibration, seed, warn)

    with writing(out.parent, f"the export {out.name}"):
        out.parent.mkdir(parents=True, exist_ok=True)
        recheck(given, out)
        clean_partials(out)  # what a killed export of this OUT left behind
        tmp = public_mkdtemp(partial_prefix(out), out.parent)
    try:
        exports: dict[str, FormatExport] = {}
        for fmt in progress(formats, "export: calibrate and convert", unit="format"):
            log(f"exporting {fmt} ...")
            with writing(out.parent, f"the {fmt} files of {out.name}"):
                # The Edge TPU compiler gets the converter's own TFLite files (compaction is not known to compile).
                exports[fmt] = export_format(fmt, run.model, run.pre, calib, tmp, opts.io, opts.tflite_weights,
                                             compact=not edgetpu, tflite_activations=opts.tflite_activations)
        log(f"fidelity on {len(test)} test images of {tasks} ...")
        ref = reference(run.model, run.pre, test)
        fidelity = {"test_images": len(test), "tasks": tasks, "tolerance": asdict(opts.tolerance), "formats": {}}
        for fmt, fx in exports.items():
            paths = ["full"] if run.model.trunk is None else ["trunk+head", "full"]
            fidelity["formats"][fmt] = evaluate_format(fx.detector(run.model), paths, test, ref, opts.tolerance,
                                                          run.pre)
        arm_drift = {}
        if opts.arm64_check:  # the same gate on ARM's kernels: a bundle of what is exported so far, emulated
            with writing(out.parent, f"the arm64 check of {out.name}"):
                atomic_write_json(tmp / FIDELITY_NAME, fidelity)
                write_manifest(tmp, build_manifest(run, opts, exports, tmp, len(calib), len(pool), seed, tasks,
                                                   True), [f for fx in exports.values() for f in fx.files]
                               + [FIDELITY_NAME])
                log("arm64 check: the formats on ARM kernels (emulated; slow) ...")
                arm_drift = arm64.fold_into_fidelity(fidelity, arm64.check_artifact(
                    tmp, opts.data_root, opts.arm64_images, log=log), opts.tolerance)
        drift = [f"{fmt} ({path}): {'; '.join(r['drift'])}" for fmt, per in fidelity["formats"].items()
                 for path, r in per.items() if r["drift"]] + arm64.drift_lines(arm_drift)
        if drift and not explicit and not opts.allow_drift:
            for f in leave_out_drifted(fidelity, set(arm_drift)):  # default formats: publish those that pass
                for file in exports.pop(f).files:
                    (tmp / file).unlink(missing_ok=True)
                warn(f"{f} left out: its accuracy drifted past the tolerance ("
                     + "; ".join(d for d in drift if d.startswith(f + " ")) + "). Ask for it with --format to "
                     "see the advice, or pass --allow-drift to publish it anyway.")
            drift = [d for d in drift if d.split(" ")[0] in exports]
        fidelity["within_tolerance"] = not drift
        with writing(out.parent, f"the manifest of {out.name}"):
            atomic_write_json(tmp / FIDELITY_NAME, fidelity)
            manifest = build_manifest(run, opts, exports, tmp, len(calib), len(pool), seed, tasks, not drift)
            files = [f for fx in exports.values() for f in fx.files] + [FIDELITY_NAME]
            files += [arm64.RESULT_NAME] if opts.arm64_check else []
            write_manifest(tmp, manifest, files)
        if drift and not opts.allow_drift:
            report = out.with_name(f"{out.name}.fidelity-failed.json")
            atomic_write_json(report, fidelity)
            ctx = ExportContext(len(calib), len(pool), opts.tflite_weights, int((test.labels == 0).sum()),
                                int((test.labels != 0).sum()))
            detail = {fmt: {path: r["drift_detail"] for path, r in per.items() if r["drift_detail"]}
                      | arm_drift.get(fmt, {}) for fmt, per in fidelity["formats"].items()}
            message = drift_message({f: d for f, d in detail.items() if d}, ctx)
            raise ExportDrift(f"{message} Nothing was written to {out}; the fidelity report is in {report}.",
                              {"out": out, "manifest": json.loads((tmp / MANIFEST_NAME).read_text()),
                               "fidelity": fidelity})
        if edgetpu:
            add_edgetpu(tmp, log=log)
        with writing(out.parent, out.name):
            write_marker(tmp, "artifact")
            recheck(given, out)
            publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest = load_manifest(out)  # what a device will read: schema, sizes and hashes as written
    return {"out": out, "manifest": manifest.data, "fidelity": fidelity}
