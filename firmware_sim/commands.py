"""What the device CLIs do (`python -m firmware_sim ...` and `edgead device ...` call these same functions).

Each returns plain JSON-ready dicts; ``emit`` receives each per-image line and ``warn`` each warning, so the
caller decides where they go (stdout / stderr).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from firmware_sim.atomic import remove_stale_temps
from firmware_sim.buffer_lock import BufferLock
from firmware_sim.buffer_log import resolved
from firmware_sim.buffer_wear import measure_writes
from firmware_sim.device import Device, image_rgb, named_task_id, open_buffer
from firmware_sim.errors import UserError
from firmware_sim.format_speed import compare_formats
from firmware_sim.keep_policy import KeepPolicy
from firmware_sim.manifest import MANIFEST_NAME
from firmware_sim.overlay import OverlayNames, save_overlay
from firmware_sim.preprocess import is_image_file
from firmware_sim.profiles import load_profiles
from firmware_sim.replay_buffer import RECORD_OVERHEAD, ReplayBuffer
from firmware_sim.sizes import parse_size

# Where overlays (and the API's maps) are drawn: the input image's own size, or the model's square frame.
MAP_FRAMES = ("image", "model")

Emit = Callable[[dict], None]
RESERVOIR = "not drawn by reservoir sampling (the task's share is full)"
Warn = Callable[[str], None]
# Profiles with less RAM than this are microcontrollers: no OS process, so RAM = arena + one record, not RSS.
MCU_RAM_BYTES = 64 * 2**20


def _stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def list_images(target: str | os.PathLike, warn: Warn = _stderr) -> list[Path]:
    """A file, or every image file under a folder (sorted); other files are skipped with one warning."""
    target = Path(target)
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise UserError(f"--images {target}: no such file or folder")
    files = sorted(p for p in target.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if is_image_file(p)]
    if len(files) > len(images):
        warn(f"{target}: skipped {len(files) - len(images)} non-image file(s) "
             f"(e.g. {next(p for p in files if not is_image_file(p)).name})")
    if not images:
        raise UserError(f"--images {target}: no image files (png, jpg, bmp, tif, webp) in this folder")
    return images


def run(artifact: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike | None = None,
        threads: int | None = None, delegate: str | None = None, buffer: str | os.PathLike | None = None,
        budget: str | int | None = None, task: str | int | None = None, format: str | None = None,
        emit: Emit = lambda d: None, warn: Warn = _stderr, xnnpack: bool = True, shrink: bool = False,
        wait: bool = False, task_id: int | None = None, map_frame: str = "image", keep: str = "normal") -> dict:
    """Score every image; one dict per image to ``emit``; an overlay PNG per image in ``out``; a summary back.

    ``task``: a product name. A task of the artifact decides with that task's threshold; with a buffer, its
    records go to the buffer task of that name (named now if new: the artifact's task index when free). With a
    buffer, a name the artifact does not know is a new product: the task-agnostic threshold, records under
    a new buffer task of that name. Names win over ids, so a task named "7" is chosen by ``--task 7``; digits
    that name no task are a buffer task id (as ``task_id``, the unambiguous way). None: the task-agnostic
    threshold and the newest buffer task. With ``buffer`` the file is locked for the whole run (``wait``: queue
    behind another process instead of failing); ``shrink`` allows a ``budget`` below the file's, counting the
    evicted records; ``keep`` (normal | all | margin:X) says which frames are offered to the buffer, and the
    summary counts the frames left out and why. A frame that cannot be read is skipped with a warning and
    counted in ``skipped``.
    """
    if buffer is None and (budget is not None or shrink or task_id is not None or keep != "normal"):
        raise UserError("--budget, --shrink, --keep and --task-id apply to a replay buffer: give --buffer FILE too")
    KeepPolicy.parse(keep)  # bad input before any work
    files = list_images(images, warn)
    device = Device(artifact, format=format, threads=threads, delegate=delegate, xnnpack=xnnpack)
    task_name, buffer_task = _parse_task(task, device.manifest.tasks, task_id, buffer is not None)
    if task_name in device.manifest.tasks:
        device.use_task(task_name)
        buffer_task = device.manifest.tasks.index(task_name)
    elif task_name is not None and buffer is None:
        device.use_task(task_name)  # not a task of the model: its UserError lists the tasks
    elif task_name is not None:
        warn(f"--task {task_name!r} is not a task of this model (its tasks: {', '.join(device.manifest.tasks) or 'none'}"
             "): a new product, decided with the task-agnostic threshold; its frames are kept under its own name")
    if buffer is not None:
        device.attach_buffer(buffer, budget, buffer_task, shrink=shrink, wait=wait, warn=warn, task_name=task_name,
                             keep=keep)
    try:
        report = device.buffer_report
        if report is not None:
            for line in report.errors[:20]:
                warn(line)
            if report.dropped or report.evicted:
                warn(f"{device.buffer_path}: {report.dropped} damaged record(s) dropped, {report.evicted} "
                     f"evicted; kept {report.kept}")
        kept = Counter()

        def counted(line: dict) -> None:
            if "buffered" in line:
                kept["buffered" if line["buffered"] else line.get("not_kept", RESERVOIR)] += 1
            emit(line)

        summary = score_files(device, files, images, out, counted, warn, map_frame=map_frame)
        if device.buffer is not None:
            device.buffer.commit(device.buffer_path)  # the offered counts of frames not kept
            buffered = kept.pop("buffered", 0)
            summary["buffer"] = {"path": str(device.buffer_path), "task": device.task_id,
                                 "task_name": device.buffer.task_names().get(device.task_id), "keep": str(device.keep),
                                 "buffered": buffered, "not_kept": dict(kept), **device.buffer.stats(),
                                 "writes": device.buffer.write_stats(),
                                 **({"load": _report(report)} if report is not None else {})}
        return summary
    finally:
        device.detach_buffer()


def score_files(device, files: list[Path], images: str | os.PathLike, out: str | os.PathLike | None = None,
                emit: Emit = lambda d: None, warn: Warn = _stderr, map_frame: str = "image") -> dict:
    """Score ``files`` with anything shaped like a Device (``infer`` -> Result, ``normalize``, ``format``,
    ``interpreter``, ``threshold``): one JSON line each to ``emit``, an overlay PNG each in ``out``; the
    host's `edgead predict` passes its torch detector here, so both print and draw the same way. A frame
    that cannot be read is skipped with a warning and counted in ``skipped``. ``map_frame``: overlays at the
    input image's size ("image", as anomalib returns maps) or in the model's S x S frame ("model")."""
    if map_frame not in MAP_FRAMES:
        raise UserError(f"map frame {map_frame!r}: expected one of {', '.join(MAP_FRAMES)}")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(images) if Path(images).is_dir() else None
    names = OverlayNames(out_dir) if out_dir is not None else None
    done, skipped, anomalous = 0, 0, 0
    for path in files:
        try:
            r = device.infer(path)
        except UserError as e:  # one unreadable file does not stop a camera's stream
            skipped += 1
            warn(f"skipped {e}")
            continue
        except MemoryError:
            skipped += 1
            warn(f"skipped {path}: not enough memory to decode it")
            continue
        line = r.to_json(str(path))
        if out_dir is not None:
            rel = path.relative_to(root) if root is not None else Path(path.name)
            png = names(rel)
            pixels, amap = r.pixels, r.map
            if map_frame == "image":  # the image as it came and its map resized to it (Preprocess.to_image)
                pixels = np.asarray(image_rgb(path))
                amap = device.preprocess.to_image(r.map, (pixels.shape[1], pixels.shape[0]))
            save_overlay(png, pixels, device.normalize(amap), score=r.score, normalized=r.normalized,
                         anomalous=r.anomalous)
            line["overlay"] = str(png)
        emit(line)
        done += 1
        anomalous += r.anomalous
    if done == 0:
        raise UserError(f"--images {images}: none of the {len(files)} image file(s) could be read")
    return {"images": done, "skipped": skipped, "anomalous": anomalous, "format": device.format,
            "interpreter": device.interpreter, "threshold": device.threshold,
            "task": getattr(device, "task_name", None)}


def _parse_task(task: str | int | None, model_tasks: list[str], task_id: int | None,
                has_buffer: bool) -> tuple[str | None, int | None]:
    """(task name, buffer task id) from --task and --task-id. A name of the model's tasks wins over digits
    (a task may be named "7"); other digits are a buffer task id; other text names a new product (which
    needs a buffer to be kept under, else the model's UserError listing its tasks)."""
    if task_id is not None and task is not None:
        raise UserError("give --task NAME or --task-id N, not both")
    if task_id is not None:
        return None, int(task_id)
    if task is None:
        return None, None
    text = str(task)
    if text in model_tasks:
        return text, None
    if text.strip().lstrip("-").isdigit():
        if not has_buffer:
            raise UserError(f"--task {text}: not a task of this model (its tasks: {', '.join(model_tasks) or 'none'}"
                            "); --budget, --shrink and an integer --task apply to a replay buffer: give --buffer "
                            "FILE too")
        return None, int(text)
    return text, None


# -- buffer -----------------------------------------------------------------------------------------------
def _report(report) -> dict:
    return {"kept": report.kept, "dropped": report.dropped, "evicted": report.evicted, "errors": report.errors}


def buffer_stats(path: str | os.PathLike) -> dict:
    buf, report = open_buffer(path)
    return {"path": str(path), "file_bytes": Path(path).stat().st_size, **buf.stats(), "load": _report(report)}


def buffer_export(path: str | os.PathLike, dest: str | os.PathLike, shrink: bool = False) -> dict:
    """Validate the device's buffer and write a clean copy (damaged records dropped, no append log) for the
    host. A file whose records do not fit its own budget is refused unless ``shrink`` (then evicted, counted)."""
    buf, report = open_buffer(path, shrink=shrink)
    if len(buf) == 0:
        raise UserError(f"{path}: the buffer holds no records; nothing for the host to replay")
    buf.set_append(False)  # the host rewrites whole files: the log's reserve is room for records there
    buf.save(dest)
    ReplayBuffer.load(dest)  # what the host will read
    return {"exported": str(dest), "records": len(buf), "bytes": buf.nbytes, "tasks": buf.tasks,
            "load": _report(report)}


def buffer_import(src: str | os.PathLike, dest: str | os.PathLike, mode: str = "merge",
                  budget: str | int | None = None, shrink: bool = False, wait: bool = False,
                  warn: Warn = _stderr) -> dict:
    """``replace``: dest becomes src (re-fitted to ``budget`` if given). ``merge``: src's records are offered to
    dest's buffer task by task (same task ids), within dest's budget (shared by all tasks). dest is locked
    while it changes (``wait`` as for run); a budget that would evict records needs ``shrink``."""
    if mode not in ("merge", "replace"):
        raise UserError(f"buffer import mode {mode!r}: expected merge or replace")
    dest = resolved(dest)  # one lock for a symlink and its target, and the link is never replaced
    with BufferLock(dest, wait=wait, notify=warn):
        remove_stale_temps(dest)
        return _import_locked(src, Path(dest), mode, budget, shrink)


def _merged_task_ids(src: ReplayBuffer, dest: ReplayBuffer) -> dict[int, int]:
    """SRC's task ids in DEST: a named product goes to DEST's task of that name (named there now if new: its
    own id when DEST has no name for it, else a new id); an unnamed task keeps its id."""
    ids = {t: t for t in src.tasks}
    for task_id, name in src.task_names().items():
        ids[task_id] = named_task_id(dest, name, task_id, 0)
        dest.name_task(ids[task_id], name)
    return ids


def _import_locked(src, dest: Path, mode: str, budget, shrink: bool) -> dict:
    incoming, report = open_buffer(src, shrink=shrink)  # never evict from SRC without --shrink
    if mode == "replace" or not dest.exists():
        buf = incoming if budget is None else open_buffer(src, budget, shrink=shrink)[0]
    else:
        buf, _ = open_buffer(dest, budget, shrink=shrink)
        if incoming.codec.spec != buf.codec.spec or (incoming.shape and buf.shape and incoming.shape != buf.shape):
            raise UserError(f"{src}: codec {incoming.codec.spec} shape {incoming.shape} cannot merge into {dest} "
                            f"(codec {buf.codec.spec} shape {buf.shape})")
        ids = _merged_task_ids(incoming, buf)
        for r in incoming.records():
            buf.add(ids[r.task_id], r.encoded, r.sample_id, r.timestamp)
    buf.save(dest)
    return {"imported": str(src), "into": str(dest), "mode": mode, **buf.stats(), "load": _report(report)}


# -- profile ----------------------------------------------------------------------------------------------
def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024  # Linux reports KiB


def _percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "min": float(a.min()), "max": float(a.max())}


def _buffer_writes(device: Device, budget_bytes: int) -> dict:
    """Bytes written to a buffer of this budget per 1,000 frames (firmware_sim.buffer_wear), or why not."""
    scale, zp, _ = device.latent_quantization()
    try:
        return measure_writes(tuple(device.manifest.data["latent"]["shape_chw"]), budget_bytes, 1000,
                              scale=scale, zero_point=zp)
    except UserError as e:
        return {"error": str(e)}


def profile(artifact: str | os.PathLike, profile_names: list[str] | None = None,
            profiles_file: str | os.PathLike | None = None, budget: str | int | None = None, runs: int = 50,
            warmup: int = 5, threads: int | None = None, format: str | None = None,
            delegate: str | None = None, image: str | os.PathLike | None = None, xnnpack: bool = True,
            compare: bool = True) -> dict:
    """Latency percentiles, RAM (peak RSS, interpreter arena, analytic int8 peak) and flash; fit per profile.
    ``compare``: also time every exported format here (interleaved, after the RAM figures are taken) and name
    the fastest in 'recommended_format' (firmware_sim.format_speed); skipped with a delegate, which applies to
    one format only."""
    if runs < 1 or warmup < 0:
        raise UserError(f"--runs {runs} / warm-up {warmup}: expected runs >= 1 and warm-up >= 0")
    budget_bytes = parse_size(budget) if budget is not None else 0
    profiles = load_profiles(profiles_file)
    names = profile_names or sorted(profiles)
    unknown = [n for n in names if n not in profiles]
    if unknown:
        raise UserError(f"unknown device profile(s) {unknown}: expected one of {', '.join(sorted(profiles))}")
    rss_before = _peak_rss_bytes()
    device = Device(artifact, format=format, threads=threads, delegate=delegate, xnnpack=xnnpack)
    m = device.manifest
    if image is None:  # a seeded camera-sized frame: resizing is part of the measured work
        rng = np.random.default_rng(0)
        frame = Image.fromarray(rng.integers(0, 256, (m.image_size * 2, m.image_size * 2, 3), dtype=np.uint8))
    else:
        frame = image
    for _ in range(warmup):
        device.infer(frame)
    ms, stages = [], {}
    for _ in range(runs):
        t0 = time.perf_counter()
        r = device.infer(frame)
        ms.append(1000.0 * (time.perf_counter() - t0))
        for k, v in r.stages_ms.items():
            stages.setdefault(k, []).append(v)
    peak_rss = _peak_rss_bytes()

    arenas = {n: rn.arena_bytes() for n, rn in device.detector.runners.items()}
    arena = max((v for v in arenas.values() if v is not None), default=None)  # graphs run one after the other
    cost = m.data.get("cost", {})
    peak_act = cost.get("peak_activation_bytes_int8")
    lat = m.data.get("latent")
    record = RECORD_OVERHEAD + int(np.prod(lat["shape_chw"])) + 64 if lat else 0  # payload + codec fields
    model_files = {p.name: p.stat().st_size for p in device.graph_files.values()}  # Edge TPU: the compiled ones
    for p in device.graph_files.values():  # an OpenVINO IR keeps its weights in the .bin beside the .xml
        if p.suffix == ".xml" and p.with_suffix(".bin").is_file():
            model_files[p.with_suffix(".bin").name] = p.with_suffix(".bin").stat().st_size
    manifest_bytes = (m.root / MANIFEST_NAME).stat().st_size
    flash = sum(model_files.values()) + manifest_bytes + budget_bytes
    mcu_ram = (arena if arena is not None else (peak_act or 0)) + (record if budget_bytes else 0)
    fits = []
    for n in names:
        p = profiles[n]
        basis = "arena+record" if p.ram_bytes < MCU_RAM_BYTES else "peak_rss"
        row = p.fit(ram_needed=mcu_ram if basis == "arena+record" else peak_rss, flash_needed=flash)
        fits.append({**row, "ram_basis": basis})
    return {
        "artifact": str(m.root), "format": device.format, "path": device.path, "interpreter": device.interpreter,
        "delegate": delegate, "threads": threads, "xnnpack": xnnpack, "image_size": m.image_size,
        "latency_ms": {"runs": runs, "warmup": warmup, **_percentiles(ms),
                       "stages_p50": {k: float(np.percentile(v, 50)) for k, v in stages.items()}},
        "ram": {"peak_rss_bytes": peak_rss, "rss_before_load_bytes": rss_before,
                "interpreter_arena_bytes": arena, "arena_per_graph": arenas,
                "arena_note": "bytes of every tensor the interpreter holds for the largest graph, weights included: "
                              "an upper bound of its activation arena",
                "analytic_peak_activation_int8_bytes": peak_act, "replay_record_bytes": record or None},
        "flash": {"model_files": model_files, "manifest_bytes": manifest_bytes, "buffer_budget_bytes": budget_bytes,
                  "total_bytes": flash},
        "buffer_writes": _buffer_writes(device, budget_bytes) if budget_bytes and lat else None,
        "profiles": fits,
        "format_comparison": (compare_formats(artifact, m.formats, frame, runs, warmup, threads, xnnpack)
                              if compare and delegate is None and len(m.formats) > 1 else None),
    }
