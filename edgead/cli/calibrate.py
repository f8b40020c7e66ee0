"""`edgead calibrate`: set a product's threshold in a run from a few labelled images (the host side of
`python -m firmware_sim calibrate`, with the same choice: firmware_sim.decisions.choose_threshold).

The run's last checkpoint scores the good (--normal) and defective (--defect) images as `edgead predict` does;
the product's threshold is replaced in that checkpoint (rewritten atomically, then re-read) and in results.json,
the old one kept in its calibration's ``extra["history"]``; an export afterwards carries it to the device.
With per-task thresholds the task-agnostic one stays their maximum. Bad input (a folder without images, the
same image in both, a task the run does not hold, an unreadable checkpoint) is an EdgeadError and nothing is
written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import click

from edgead.errors import EdgeadError
from firmware_sim.decisions import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD, LABELLED_KEYS


def relabelled(cal, result: dict, when: str):
    """A Calibration like ``cal`` with the chosen threshold; what chose it in extra["labelled"] and the old
    threshold appended to extra["history"]."""
    old = {"threshold": cal.threshold, "quantile": cal.quantile, "n_images": cal.n_images,
           **({"labelled": cal.extra["labelled"]} if "labelled" in cal.extra else {}), "replaced": when}
    extra = {**cal.extra, "labelled": {**{k: result[k] for k in LABELLED_KEYS}, "date": when},
             "history": [*cal.extra.get("history", []), old]}
    return replace(cal, threshold=float(result["threshold"]), extra=extra)


def calibrate_run(run_dir: str | Path, task: str | None, normal: str | Path, defect: str | Path,
                  method: str = DEFAULT_CALIBRATION_METHOD, device: str = "cpu") -> dict:
    """Set ``task``'s threshold in the run's last checkpoint from labelled images; returns what changed."""
    from edgead.engine.checkpoint import load_checkpoint, save_checkpoint
    from edgead.models.teacher_student import Calibration
    from edgead.predict import HostDetector, checkpoint_of
    from firmware_sim.atomic import atomic_write_json
    from firmware_sim.calibrate import check_classes, labelled_images, score_all
    from firmware_sim.decisions import NormalPrior, choose_threshold

    normal_files, defect_files = labelled_images(normal, "--normal"), labelled_images(defect, "--defect")
    check_classes(normal_files, defect_files)
    ckpt, _, names = checkpoint_of(run_dir)
    model, pre, meta = load_checkpoint(ckpt)
    cal = model.calibration
    per = dict(cal.per_task)
    if per and task is None:
        raise EdgeadError(f"{run_dir}: has one threshold per product; say which with --task (its tasks: "
                          f"{', '.join(per)})")
    if per and task not in per:
        raise EdgeadError(f"--task {task!r}: not a task of {run_dir}; its tasks: {', '.join(per)}")
    if not per and task is not None and [task] != names[:1]:
        raise EdgeadError(f"--task {task!r}: {run_dir} has one threshold (task {', '.join(names)}); leave --task out")
    old = Calibration.from_dict(per[task]) if per else cal
    detector = HostDetector(model, pre, device)
    if per:
        detector.use_task(task)
    normal_scores, defect_scores = score_all(detector, normal_files), score_all(detector, defect_files)
    result = choose_threshold(normal_scores, defect_scores, NormalPrior.from_calibration(asdict(old)), method)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    new = relabelled(old, result, when)
    if per:
        per[task] = asdict(new)
        agnostic = max(c["threshold"] for c in per.values())
        top = cal if agnostic == cal.threshold else relabelled(
            cal, {**result, "threshold": agnostic, "method": "max over the tasks' thresholds"}, when)
        model.calibration = replace(top, per_task=per)
        if "calibrations" in meta:  # the learner's per-task list, in task order
            meta["calibrations"] = [per[n] if n in per else c for n, c in zip(names, meta["calibrations"],
                                                                                strict=False)]
    else:
        model.calibration = new
    results_path = Path(run_dir) / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    save_checkpoint(ckpt, model, pre, **meta)
    check, _, _ = load_checkpoint(ckpt)  # re-read what was written
    got = check.calibration.per_task[task]["threshold"] if per else check.calibration.threshold
    if got != result["threshold"]:
        raise EdgeadError(f"{ckpt}: the rewritten checkpoint does not hold the new threshold")
    if isinstance(results, dict) and isinstance(results.get("calibration"), dict):
        rc = results["calibration"]
        if per and isinstance(rc.get("per_task"), dict) and isinstance(rc["per_task"].get(task), dict):
            rc["per_task"][task]["threshold"] = result["threshold"]
            if isinstance(rc.get("task_agnostic"), dict):
                rc["task_agnostic"]["threshold"] = model.calibration.threshold
        rc.setdefault("labelled", []).append({"task": task, "date": when, "old_threshold": old.threshold,
                                              "threshold": result["threshold"], "checkpoint": ckpt.name})
        atomic_write_json(results_path, results)
    return {"run": str(run_dir), "task": task, "checkpoint": str(ckpt), "old_threshold": old.threshold,
            "threshold": result["threshold"], "task_agnostic_threshold": model.calibration.threshold,
            **{k: result[k] for k in LABELLED_KEYS}, "anchor_threshold": result["anchor_threshold"],
            "labelled_cut": result["labelled_cut"], "normal_scores": normal_scores, "defect_scores": defect_scores,
            "history": len(new.extra["history"])}


@click.command("calibrate")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder (edgead train --out).")
@click.option("--task", default=None, help="The product (a task name of the run); needed when the run has one "
              "threshold per product.")
@click.option("--normal", required=True, type=click.Path(path_type=Path), help="Folder of good images of the product.")
@click.option("--defect", required=True, type=click.Path(path_type=Path),
              help="Folder of defective images of the product.")
@click.option("--method", type=click.Choice(CALIBRATION_METHODS), default=DEFAULT_CALIBRATION_METHOD,
              show_default=True, help="anchored: the stored threshold (set without labels) moved toward the lognormal "
              "cut by k/(k+2) of the way with k defects; lognormal: "
              "midpoint of the mean log scores (good ones pooled with the held-out normals); best-cut: the best "
              "balanced accuracy on these images. See docs/thresholds.md.")
@click.option("--device", default="cpu", show_default=True, help="torch device.")
def calibrate(run_dir, task, normal, defect, method, device):
    """Set a product's threshold from a few labelled images: the run's last checkpoint is rewritten (the old
    threshold kept in its history); export again to carry it to a device."""
    out = calibrate_run(run_dir, task, normal, defect, method, device)
    click.echo(f"{out['task'] or 'threshold'}: {out['old_threshold']:.6g} -> {out['threshold']:.6g} ({out['method']}; "
               f"{out['n_normal']} good, {out['n_defect']} defective images; on them: false alarms "
               f"{_pct(out['false_alarm_rate'])}, defects caught {_pct(out['catch_rate'])})", err=True)
    if out["note"]:
        click.echo(f"note: {out['note']}", err=True)
    click.echo(json.dumps({k: v for k, v in out.items() if not k.endswith("_scores")}, default=str))


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"
