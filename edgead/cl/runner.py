"""A run folder driven by the continual learner (edgead.cl.learner): `edgead train` and `edgead learn`.

`run_stream` trains a new run over a stream of tasks, or resumes one killed mid-stream; `learn_run` continues
a finished run with new tasks, months later, from its last checkpoint, memory and calibrations. Both go
through the same `Learner.learn` step, which never looks at how many tasks will follow: `train --tasks a`,
then `learn --tasks b`, then `learn --tasks c` ends with the numbers of `train --tasks a,b,c`.

Each call is a *version* of the run (results.json ``versions``): its tasks, command and the options it may
change (epochs, steps, device, a larger budget). Every version's checkpoint and memory file stay on disk
(checkpoints/task_NN.pt, memory/after_task_NN.*), so `eval/predict/export --checkpoint N` read any of them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from edgead.cl.config import ReplayConfig
from edgead.cl.learner import EvaluationPlugin, Learner
from edgead.cl.results import build_results
from edgead.cl.run_folder import STATE_NAME, check_new_run_folder, config_differences, config_path, read_state
from edgead.cl.sources import open_task, run_sources, source_of
from edgead.data.checks import check_stream_masks
from edgead.data.stream import TaskStream
from edgead.engine.checkpoint import checkpoint_bytes
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from edgead.models.teacher_student import DetectorConfig
from edgead.outputs import check_writable, writing
from firmware_sim.atomic import atomic_write_json

# What a later version may change; everything else would make the run's tasks incomparable or its files
# unreadable (model, backbone, image size, codec, seed, threshold rule, ...).
CHANGEABLE_TRAIN = ("epochs", "steps", "device", "progress")


def stream_config(stream, det: DetectorConfig, train: TrainConfig, replay: ReplayConfig) -> dict:
    """The run configuration state.json and results.json record (the keys older runs have, in that order)."""
    config = {"detector": det.to_dict(), "train": {k: v for k, v in train.to_dict().items() if k != "progress"},
              **replay.to_dict(), "tasks": stream.names, "data_root": config_path(stream.root)}
    # Paths are kept absolute and normalised, so `d` and `/abs/path/d/` resume the same run.
    config["device_buffer"], config["device_trunk"] = config_path(replay.device_buffer), config_path(replay.device_trunk)
    config = {k: config[k] for k in ("detector", "train", "strategy", "codec", "budget_bytes", "memory_size",
                                     "policy", "tasks", "data_root", "device_buffer", "device_trunk")}
    if getattr(stream, "max_train", None) is not None:  # only when set, so older runs still resume
        config["max_train"] = stream.max_train
    if replay.calibration_anchors != 1:  # only when not the default, so earlier runs' configs still resume
        config["calibration_anchors"] = replay.calibration_anchors
    if replay.latent_crop != "auto":
        config["latent_crop"] = replay.latent_crop
    if replay.recalibrate != "anchors":
        config["recalibrate"] = replay.recalibrate
    return config


def version_entry(n: int, first: int, names: list[str], command: str, train: TrainConfig, replay: ReplayConfig,
             **more) -> dict:
    return {"version": n, "first_task": first, "tasks": list(names), "command": command,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "epochs": train.epochs, "steps": train.steps, "device": train.device,
            "budget_bytes": replay.budget_bytes, **more}


class RunWriter:
    """Writes a step's files: the learner's own, then results.json and state.json (each atomic)."""

    def __init__(self, out: Path, config: dict, versions: list[dict], task_data: list[dict], command: str):
        self.out, self.config, self.versions, self.task_data, self.command = out, config, versions, task_data, command

    def __call__(self, learner: Learner) -> None:
        i = len(learner.names) - 1
        if learner.memory is not None:  # what each product holds once this version is done (so far)
            self.versions[-1]["memory_after"] = learner.memory_holdings()
        with writing(self.out, f"the results of task {i + 1} ({learner.names[i]})"):
            mem_path = learner.save_files(i)
            atomic_write_json(self.out / "results.json", build_results(
                learner, self.config, command=self.command, versions=self.versions, task_data=self.task_data))
            atomic_write_json(self.out / STATE_NAME, {
                "config": self.config, "completed_tasks": i + 1, "versions": self.versions,
                "task_data": self.task_data,
                "memory_file": None if mem_path is None else str(mem_path.relative_to(self.out))})


def _check_room(learner: Learner, out: Path, n_new: int) -> None:
    """Room for every file still to be written (a checkpoint and a memory file per task), before training."""
    ckpt, mem = checkpoint_bytes(learner.model), 0 if learner.memory is None else learner.memory.budget_bytes
    check_writable(out, what="--out", largest_file=max(ckpt, mem), total_bytes=n_new * (ckpt + mem))


def run_stream(stream: TaskStream, det: DetectorConfig, train: TrainConfig, replay: ReplayConfig | None = None,
               out: Path | str | None = None, *, weights: str | Path | None = None, resume: bool = False,
               skip_bad: bool = False, command: str | None = None, force: bool = False, log=print,
               plugins: Sequence[EvaluationPlugin] = ()) -> dict:
    """Train ``det`` over the tasks of ``stream`` in order, with the strategy and memory of ``replay``.

    Args:
        stream: the tasks (categories of one dataset root, or folder tasks), in training order.
        det: the detector's architecture (model, backbone, levels, bootstrap, image size).
        train: the training loop's settings (epochs, batch, optimiser, seed, replay ratio, ...).
        replay: the strategy and its replay memory (default: fine-tuning, nothing kept).
        out: the run folder: checkpoints/, memory/, calibration/, state.json and results.json.
        weights: the backbone's ImageNet weights file or folder (default: the usual search).
        resume: continue a killed run from its last completed task (the configuration must match).
        skip_bad: skip unreadable images (and, on resume, damaged replay records) with a warning.
        command: the command line recorded in results.json (default: sys.argv).
        force: start a run in a folder that holds other files (never over a run: that needs ``resume``).
        log: called with one line of progress text at a time.
        plugins: evaluation plugins that add research numbers to each metric row.

    Returns:
        results.json's content (edgead.cl.results): m[i][j] matrices and summaries, memory held per task,
        calibrations, deployed numbers at each task's own threshold, versions, cost and timings.
    """
    if out is None:
        raise EdgeadError("run_stream needs an output folder (out)")
    replay = replay or ReplayConfig()
    if not isinstance(replay, ReplayConfig):
        raise TypeError(f"run_stream(stream, detector, train, replay, out): replay is a {type(replay).__name__}, "
                        "expected a ReplayConfig")
    replay.check_detector(det.model)
    out, command = Path(out), command or " ".join(sys.argv)
    config = stream_config(stream, det, train, replay)
    done, versions = 0, [version_entry(0, 0, stream.names, command, train, replay)]
    if resume:
        state = read_state(out)
        if len(state.get("versions", [])) > 1:
            raise EdgeadError(f"cannot resume {out} with `edgead train --resume`: it has grown with `edgead learn`; "
                              f"continue it with `edgead learn --run {out} --resume`")
        diff = config_differences(state["config"], config)
        if diff:
            raise EdgeadError(f"cannot resume {out}: configuration differs from the saved run in {diff}")
        done, versions = state["completed_tasks"], state.get("versions") or versions
    else:
        check_new_run_folder(out, force=force)
    check_writable(out, what="--out")  # before the weights load and the data are read
    check_stream_masks(stream, skip_bad=skip_bad)  # every task's masks, before the first task trains
    learner = Learner(out, det, replay, train, weights=weights, skip_bad=skip_bad, log=log, plugins=plugins)
    learner.check_budget(len(stream))
    _check_room(learner, out, len(stream) - done)
    learner.restore(done)
    if done:
        log(f"resuming {out} after task {done}/{len(stream)}")
    task_data = [source_of(stream, n) for n in stream.names]
    learner.sources = task_data[:done]
    persist = RunWriter(out, config, versions, task_data, command)
    for task in stream.tasks[done:]:
        learner.learn(task, task_data[len(learner.names)], persist)
    return json.loads((out / "results.json").read_text())


def open_run(run: Path | str) -> dict:
    """A finished run's saved state, or a clear error: not a run, or stopped mid-task (resume it first)."""
    run = Path(run)
    if not (run / STATE_NAME).is_file():
        raise EdgeadError(f"--run {run}: not an edgead run folder (no {STATE_NAME}; give the --out of an "
                          "`edgead train` that completed at least one task)")
    state = read_state(run)
    planned, done = state["config"].get("tasks", []), state["completed_tasks"]
    if done < len(planned):
        raise EdgeadError(f"--run {run}: stopped during task {done + 1} ({planned[done]}) of {len(planned)}; finish "
                          f"it first with `edgead learn --run {run} --resume` (a run of one `edgead train` "
                          "also resumes with `edgead train ... --resume`)")
    return state


# Options fixed by a run's first version: where each is recorded in its configuration.
FIXED = {"model": ("detector", "model"), "backbone": ("detector", "backbone"), "image_size": ("detector", "image_size"),
         "strategy": ("strategy",), "codec": ("codec",), "seed": ("train", "seed"),
         "threshold_rule": ("train", "threshold_rule"), "resize": ("train", "resize")}


def check_fixed(run: Path, config: dict, given: dict) -> None:
    """Refuse a value for an option a later version cannot change (model, backbone, image size, codec, ...)."""
    for key, value in given.items():
        if value is None:
            continue
        path = FIXED[key]
        saved = config.get(path[0]) if len(path) == 1 else (config.get(path[0]) or {}).get(path[1])
        if str(saved) != str(value):
            raise EdgeadError(f"--{key.replace('_', '-')} {value}: --run {run} was trained with {saved}; a later "
                              f"version keeps the run's {key.replace('_', ' ')} (its products share one model and "
                              "memory): start a new run with `edgead train` to change it")


def changed_train(saved: dict, epochs: int | None, steps: int | None, device: str | None) -> TrainConfig:
    """The saved training settings with what this version may change."""
    train = TrainConfig(**{**saved, "progress": False})
    changes = {k: v for k, v in (("epochs", epochs), ("steps", steps), ("device", device)) if v is not None}
    if epochs is not None and steps is None:
        changes["steps"] = None  # --epochs alone replaces a step budget
    return replace(train, **changes)


def changed_replay(config: dict, budget_bytes: int | None) -> ReplayConfig:
    replay = ReplayConfig.from_dict(config)
    if budget_bytes is None or budget_bytes == replay.budget_bytes:
        return replay
    if replay.budget_bytes is None or not replay.keeps_memory:
        raise EdgeadError(f"--budget {budget_bytes:,} B: this run keeps "
                          + ("no replay memory" if not replay.keeps_memory else "a sample count (--memory-size)")
                          + "; a version may only raise a byte budget it already has")
    if budget_bytes < replay.budget_bytes:
        raise EdgeadError(f"--budget {budget_bytes:,} B is below the run's {replay.budget_bytes:,} B: a later "
                          "version may raise the budget, never lower it (the device's memory is already planned)")
    return replace(replay, budget_bytes=budget_bytes)


def learn_run(run: Path | str, stream=None, *, epochs: int | None = None, steps: int | None = None,
              budget_bytes: int | None = None, device: str | None = None, resume: bool = False,
              skip_bad: bool = False, command: str | None = None, log: Callable[[str], None] = print,
              plugins: Sequence[EvaluationPlugin] = (), prepare: Callable[[int], None] | None = None,
              fixed: dict | None = None) -> dict:
    """Continue the finished run ``run`` with the tasks of ``stream`` (a new version of the run).

    Args:
        run: a run folder (`edgead train --out`).
        stream: the new tasks, in order (their names must be new to the run); None with ``resume``.
        epochs, steps, device: training settings for this version (default: the run's).
        budget_bytes: a larger replay budget from this version on (never smaller).
        resume: finish the version a kill interrupted (its tasks and settings are in state.json).
        skip_bad, command, log, plugins: as `run_stream`.
        prepare: called with the new version's number once every check has passed, before anything is
            written (the CLI writes a folder task's dataset file there).
        fixed: values given for options a version cannot change (keys of FIXED): refused unless they are the
            run's own.

    Returns:
        results.json's content, with a row and a column more per new task.
    """
    run, command = Path(run), command or " ".join(sys.argv)
    if resume:
        return _resume_version(run, skip_bad=skip_bad, command=command, log=log, plugins=plugins)
    if stream is None or not len(stream):
        raise EdgeadError("learn: no new tasks (give --data ROOT --tasks NEW or --normal/--abnormal folders)")
    state = open_run(run)
    config, done = json.loads(json.dumps(state["config"])), state["completed_tasks"]
    check_fixed(run, config, fixed or {})
    taken = [n for n in stream.names if n in config["tasks"]]
    if taken:
        raise EdgeadError(f"--run {run} already has task(s) {taken} (its tasks: {', '.join(config['tasks'])}); "
                          "a new product needs a new name (another category, or --name for a folder task)")
    train = changed_train(config["train"], epochs, steps, device)
    replay = changed_replay(config, budget_bytes)
    check_stream_masks(stream, skip_bad=skip_bad)
    versions = state.get("versions") or [version_entry(0, 0, config["tasks"], "(before versions were recorded)",
                                                  TrainConfig(**config["train"]), ReplayConfig.from_dict(config))]
    n = len(versions)
    learner = Learner(run, DetectorConfig.from_dict(config["detector"]), replay, train, restoring=True,
                      skip_bad=skip_bad, log=log, plugins=plugins)
    learner.check_budget(done + len(stream))
    _check_room(learner, run, len(stream))
    if prepare is not None:
        prepare(n)
    task_data = [*run_sources({**state, "tasks": config["tasks"]}), *(source_of(stream, t) for t in stream.names)]
    versions.append(version_entry(n, done, stream.names, command, train, replay))
    config["tasks"] = [*config["tasks"], *stream.names]
    if replay.budget_bytes is not None:
        config["budget_bytes"] = replay.budget_bytes
    log(f"learning {', '.join(stream.names)} after {done} task(s) of {run} (version {n})")
    return _continue(learner, done, list(stream.tasks), RunWriter(run, config, versions, task_data, command))


def _resume_version(run: Path, *, skip_bad: bool, command: str, log, plugins) -> dict:
    """Finish the tasks of the last version of ``run`` that a kill left undone, with that version's settings."""
    state = read_state(run)
    config, done = state["config"], state["completed_tasks"]
    if done >= len(config["tasks"]):
        raise EdgeadError(f"--run {run}: nothing to resume (all {done} task(s) completed); add products with "
                          "`edgead learn --run RUN --data ROOT --tasks NEW`")
    versions = state.get("versions") or []
    last = versions[-1] if versions else {}
    train = changed_train(config["train"], last.get("epochs"), last.get("steps"), last.get("device"))
    replay = changed_replay(config, last.get("budget_bytes"))
    task_data = run_sources({**state, "tasks": config["tasks"]})
    pending = [open_task(task_data[k], config["tasks"][k]) for k in range(done, len(config["tasks"]))]
    learner = Learner(run, DetectorConfig.from_dict(config["detector"]), replay, train, restoring=True,
                      skip_bad=skip_bad, log=log, plugins=plugins)
    log(f"resuming {run} after task {done}/{len(config['tasks'])}")
    return _continue(learner, done, pending, RunWriter(run, config, versions, task_data, command))


def _continue(learner: Learner, done: int, tasks: list, persist: RunWriter) -> dict:
    learner.restore(done, read_state(persist.out).get("memory_file"))
    learner.sources = persist.task_data[:done]
    for task in tasks:
        learner.learn(task, persist.task_data[len(learner.names)], persist)
    return json.loads((persist.out / "results.json").read_text())
