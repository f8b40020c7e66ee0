"""What a device kept, merged into a run: `edgead learn --run RUN --device-buffer BUF`.

A device running `firmware_sim run --buffer` keeps trunk latents of the frames it decided normal, per product
name. Merging them into RUN's replay memory closes the loop: a product the run already knows (same name) gets
the device's latents in its share of the memory; a product the run has never seen becomes a new task of the
run, calibrated from those latents (its threshold by the run's rule on their scores; a rule that needs
pseudo-defects needs images, so such a task uses the legacy quantile rule and says so), with one of them kept
as its calibration anchor. The budget is re-shared among all products, as for any new task, and the export
after the merge carries every product's threshold.

Refused, with RUN left as it was: a run that keeps no latent memory, a buffer of another latent shape (another
model, backbone, bootstrap level or image size), a buffer with no records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgead.cl.learner import Learner, memory_path
from edgead.cl.runner import RunWriter, changed_replay, changed_train, open_run, version_entry
from edgead.cl.sources import device_source, run_sources
from edgead.engine.thresholds import LEGACY_THRESHOLD_RULE, ThresholdRule
from edgead.errors import EdgeadError
from edgead.models.teacher_student import Calibration, DetectorConfig
from firmware_sim.errors import UserError
from firmware_sim.replay_buffer import ReplayBuffer


def _read_buffer(path: Path, latent_shape: tuple[int, ...], log) -> dict[str, list]:
    """The device buffer's records per product name; unnamed tasks (older files) are named device-task-ID."""
    try:
        buf, report = ReplayBuffer.load(path)
    except UserError as e:
        raise EdgeadError(f"--device-buffer {path}: {e}") from None
    if report.dropped or report.evicted:  # evicted: a header whose budget is below its own content
        log(f"warning: {path}: {report.dropped} damaged record(s) dropped, {report.evicted} evicted (over the "
            f"file's budget), {report.kept} intact merged")
    if buf.shape is None or len(buf) == 0:
        raise EdgeadError(f"--device-buffer {path}: holds no records; nothing to merge")
    if tuple(buf.shape) != tuple(latent_shape):
        raise EdgeadError(f"--device-buffer {path}: latents of shape {tuple(buf.shape)}, but this run's model gives "
                          f"{tuple(latent_shape)} (another model, backbone, bootstrap level or image size); nothing "
                          "was merged")
    names = buf.task_names()
    return {names.get(t, f"device-task-{t}"): [r.encoded for r in buf.records(t)] for t in buf.tasks
            if any(True for _ in buf.records(t))}


def _latent_calibration(learner: Learner, latents: np.ndarray) -> Calibration:
    """A new product's calibration from the device's kept latents (no images: a rule that needs pseudo-defects
    falls back to the legacy quantile rule, recorded in ``threshold_rule``)."""
    model, rule = learner.model, ThresholdRule.parse(learner.train_cfg.threshold_rule)
    if rule.needs_pseudo:
        rule = ThresholdRule.parse(LEGACY_THRESHOLD_RULE)
    model.eval()
    with torch.no_grad():
        maps, scores = model.predict_latent(torch.from_numpy(latents.astype(np.float32)), learner.pre.image_size)
    s, m = scores.cpu().numpy().astype(np.float64), maps.cpu().numpy()
    threshold = rule.threshold(s)
    return Calibration(threshold=threshold, score_mean=float(s.mean()), score_std=float(s.std()),
                       score_min=float(m.min()), score_max=float(s.max()),
                       quantile=rule.value if rule.kind == "quantile" else float((s <= threshold).mean()),
                       n_images=len(s), threshold_rule=f"{rule} (on {len(s)} device latents)",
                       pixel_threshold=float(np.quantile(m, 0.999)))


def _add_product(learner: Learner, name: str, encoded: list, source: dict) -> None:
    """A product the run has not seen: a new task calibrated from the device's latents, its share of memory."""
    i = len(learner.names)
    learner.names.append(name)
    learner.sources.append(source)
    latents = np.stack([learner.memory.decode(e) for e in encoded])
    learner.fit_cals.append(_latent_calibration(learner, latents))
    learner.anchors.add_latents(i, learner.model, latents[:1])
    learner.recalibrate()
    _merge(learner, i, encoded[1:] if len(encoded) > 1 else encoded, len(learner.names))
    learner.rows.append(learner.evaluate_part(i))
    learner.timings.append({"train_seconds": 0.0, "prepare_seconds": 0.0, "epoch_seconds": [],
                            "selected_epoch": None, "eval_seconds": 0.0, "device_buffer": source["device_buffer"]})


def _merge(learner: Learner, i: int, encoded: list, n_tasks: int) -> None:
    budget = learner.memory_budget(n_tasks)
    side = (learner.replay.crop_side(learner.latent_shape, budget, n_tasks, learner.names[:n_tasks])
            if budget is not None else 0)
    learner.memory.reshare(i, budget, side)
    learner.memory.merge(i, encoded)
    learner.memory.name_tasks(learner.names)


def merge_device_buffer(run: Path | str, buffer: Path | str, *, budget_bytes: int | None = None,
                        command: str = "", log: Callable[[str], None] = print) -> dict:
    """Merge the device buffer ``buffer`` into the run ``run`` (a new version); returns results.json."""
    run, buffer = Path(run), Path(buffer)
    state = open_run(run)
    config, done = json.loads(json.dumps(state["config"])), state["completed_tasks"]
    replay = changed_replay(config, budget_bytes)
    if replay.strategy != "compressed-replay":
        raise EdgeadError(f"--run {run} keeps no latent memory (strategy {replay.strategy}); a device buffer can "
                          "join only a compressed-replay run")
    train = changed_train(config["train"], None, None, None)
    learner = Learner(run, DetectorConfig.from_dict(config["detector"]), replay, train, restoring=True, log=log)
    products = _read_buffer(buffer, learner.latent_shape, log)
    new = [n for n in products if n not in config["tasks"]]
    learner.check_budget(done + len(new))
    learner.restore(done, state.get("memory_file"))
    task_data = run_sources({**state, "tasks": config["tasks"]})
    learner.sources = task_data[:done]
    versions = state.get("versions") or []
    n = len(versions)
    versions.append(version_entry(n, done, new, command, train, replay, device_buffer=str(buffer.resolve()),
                             merged={k: len(v) for k, v in products.items()}))
    config["tasks"] = [*config["tasks"], *new]
    task_data += [device_source(buffer) for _ in new]
    persist = RunWriter(run, config, versions, task_data, command)
    known = {k: v for k, v in products.items() if k not in new}
    for name, encoded in known.items():
        _merge(learner, learner.names.index(name), encoded, done)
    if not new:  # the known products' memory grew: a file of its own, so the earlier version's stays as it was
        learner.memory_file = memory_path(run, done - 1, f"v{n}.{learner.memory.file_suffix}")
        persist(learner)
    for name in new:
        _add_product(learner, name, products[name], task_data[len(learner.names)])
        persist(learner)
    log(f"merged {sum(map(len, products.values()))} latent(s) of {len(products)} product(s) from {buffer} "
        f"({len(new)} new: {', '.join(new) or 'none'})")
    return json.loads((run / "results.json").read_text())

