"""`python -m firmware_sim calibrate`: set a product's threshold on the device from a few labelled images.

No host needed: the artifact's own model scores the good (--normal) and defective (--defect) images, a threshold
is chosen from those scores and the held-out normals' statistics stored with the current threshold
(firmware_sim.decisions.choose_threshold, the same code as the host's `edgead calibrate`), and the manifest is
rewritten atomically with it. The threshold it replaces is kept in that calibration's ``history`` list; with
per-task thresholds the task-agnostic one stays the maximum of the tasks' (recorded in its history too). The
manifest is verified before (every file's size and sha256) and re-read after. Bad input (a folder without
images, a task the artifact does not hold, files that no longer match the manifest, an image that cannot be
read) is a UserError and the manifest is left as it was.
"""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime
from pathlib import Path

from firmware_sim.atomic import atomic_write_json
from firmware_sim.decisions import DEFAULT_CALIBRATION_METHOD, LABELLED_KEYS, NormalPrior, choose_threshold
from firmware_sim.errors import UserError
from firmware_sim.manifest import MANIFEST_NAME, load_manifest, validate
from firmware_sim.preprocess import is_image_file

# What a history entry keeps of the calibration it replaces.
HISTORY_KEYS = ("threshold", "quantile", "n_images", "labelled")


def labelled_images(folder: str | os.PathLike | None, option: str) -> list[Path]:
    """Every image file under ``folder`` (sorted); UserError naming the option when it has none."""
    if folder is None:
        raise UserError(f"{option}: give a folder of images")
    folder = Path(folder)
    if folder.is_file() and is_image_file(folder):
        return [folder]
    if not folder.is_dir():
        raise UserError(f"{option} {folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and is_image_file(p))
    if not files:
        raise UserError(f"{option} {folder}: no image files (png, jpg, bmp, tif, webp) in this folder")
    return files


def check_classes(normal: list[Path], defect: list[Path]) -> None:
    """The same image labelled both good and defective is one class only, not a calibration set."""
    both = {p.resolve() for p in normal} & {p.resolve() for p in defect}
    if both:
        raise UserError(f"--normal and --defect share {len(both)} image(s) (e.g. {sorted(both)[0]}): each image must "
                        "be labelled good or defective, not both")


def new_calibration(old: dict, result: dict, when: str) -> dict:
    """``old`` with the chosen threshold, what chose it, and ``old``'s threshold appended to its history."""
    entry = {k: v for k, v in old.items() if k != "history"}
    history = list(old.get("history") or []) + [{k: entry.get(k) for k in HISTORY_KEYS if k in entry}
                                                | {"replaced": when}]
    labelled = {k: result[k] for k in LABELLED_KEYS}
    return {**entry, "threshold": float(result["threshold"]), "labelled": {**labelled, "date": when},
            "history": history}


def calibrated_manifest(data: dict, task: str | None, result: dict, when: str) -> dict:
    """A copy of manifest ``data`` with ``task``'s threshold (or the only one, task None) set from ``result``."""
    data = copy.deepcopy(data)
    per = (data.get("task_calibration") or {}).get("per_task") or {}
    if task is None:
        data["calibration"] = new_calibration(data["calibration"], result, when)
        return data
    per[task] = new_calibration(per[task], result, when)
    agnostic = max(float(c["threshold"]) for c in per.values() if c.get("threshold") is not None)
    if agnostic != data["calibration"].get("threshold"):  # the task-agnostic threshold: the max of the tasks'
        data["calibration"] = new_calibration(data["calibration"], {**result, "threshold": agnostic,
                                                                   "method": "max over the tasks' thresholds"}, when)
    return data


def score_all(device, files: list[Path]) -> list[float]:
    """Each labelled image's score; an image that cannot be read is an error (a label without a score would
    silently change the calibration set)."""
    scores = []
    for path in files:
        try:
            scores.append(float(device.infer(path).score))
        except MemoryError:
            raise UserError(f"{path}: not enough memory to decode this image") from None
    return scores


def calibrate(artifact: str | os.PathLike, normal: str | os.PathLike | None, defect: str | os.PathLike | None,
              task: str | None = None, method: str = DEFAULT_CALIBRATION_METHOD, format: str | None = None,
              threads: int | None = None) -> dict:
    """Score the labelled images with the artifact, choose the threshold, rewrite the manifest atomically.

    ``task``: the product (a task name of the artifact); required when the artifact has per-task thresholds,
    None for an artifact with one threshold. Returns the old and new threshold, the method and what it does on
    the labelled images.
    """
    from firmware_sim.device import Device  # loads the interpreters: after the cheap checks

    normal_files, defect_files = labelled_images(normal, "--normal"), labelled_images(defect, "--defect")
    check_classes(normal_files, defect_files)
    root = Path(artifact)
    manifest = load_manifest(root)  # schema, and every file's size and sha256 against the manifest
    if manifest.tasks and task is None:
        raise UserError(f"{root / MANIFEST_NAME}: has one threshold per product; say which with --task "
                        f"(its tasks: {', '.join(manifest.tasks)})")
    if task is not None and not manifest.tasks:
        raise UserError(f"--task {task!r}: {root / MANIFEST_NAME} has one threshold for every image (exported "
                        "without per-task thresholds); leave --task out")
    old = manifest.calibration(task)  # UserError listing the tasks for an unknown name
    with Device(root, format=format, threads=threads) as device:
        if task is not None:
            device.use_task(task)
        normal_scores, defect_scores = score_all(device, normal_files), score_all(device, defect_files)
        fmt = device.format
    result = choose_threshold(normal_scores, defect_scores, NormalPrior.from_calibration(old), method)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    data = calibrated_manifest(manifest.data, task, {**result, "format": fmt}, when)
    validate(data, str(root / MANIFEST_NAME))
    if load_manifest(root).data != manifest.data:  # changed under us (another calibrate): do not overwrite it
        raise UserError(f"{root / MANIFEST_NAME}: changed while the images were scored; run calibrate again")
    atomic_write_json(root / MANIFEST_NAME, data)  # the file records unchanged: the verified files stay valid
    again = load_manifest(root).calibration(task)  # re-read and re-verified
    if again.get("threshold") != result["threshold"]:
        raise UserError(f"{root / MANIFEST_NAME}: the rewritten manifest does not hold the new threshold")
    return {"artifact": str(root), "task": task, "format": fmt, "old_threshold": old.get("threshold"),
            "threshold": result["threshold"], "task_agnostic_threshold": data["calibration"]["threshold"],
            **{k: result[k] for k in LABELLED_KEYS},
            "normal_scores": normal_scores, "defect_scores": defect_scores,
            "history": len(again.get("history") or [])}
