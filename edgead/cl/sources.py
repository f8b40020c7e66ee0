"""Where each task of a run reads its images: one record per task, so a run can grow from several datasets.

A run that starts with `edgead train --data ROOT --tasks a` and grows with `edgead learn --data OTHER --tasks b`
keeps, per task, the dataset (an MVTec AD root or a dataset .yaml) and its --max-train. Evaluation, `edgead
eval` and later `learn` calls reopen each task from its own record. A task that came from a device buffer has
no images anywhere (``data`` is None): it is never evaluated, only recalibrated from its anchor.
"""

from __future__ import annotations

from pathlib import Path

from edgead.cl.run_folder import config_path
from edgead.data.stream import TaskSequence
from edgead.errors import EdgeadError


def source_of(stream, name: str) -> dict:
    """The record of task ``name`` of ``stream`` (an MVTec root or a dataset file, as config_path keeps it)."""
    return {"data": config_path(stream.root), "max_train": getattr(stream, "max_train", None), "task": name}


def device_source(buffer: str | Path) -> dict:
    """The record of a task that arrived as a device's kept latents (no images to evaluate)."""
    return {"data": None, "max_train": None, "task": None, "device_buffer": config_path(buffer)}


def open_task(source: dict, name: str):
    """The task ``name`` from its record; an EdgeadError says why when its dataset is not reachable."""
    from edgead.data.folder import open_stream

    if source.get("data") is None:
        raise EdgeadError(f"task {name}: came from a device buffer ({source.get('device_buffer')}); it has no "
                          "test images")
    if not Path(source["data"]).exists():
        raise EdgeadError(f"task {name}: its dataset {source['data']} is not reachable")
    return open_stream(source["data"], [source.get("task") or name], source.get("max_train")).tasks[0]


class SourcedStream(TaskSequence):
    """Tasks reopened from their records, in the run's order (what `edgead eval` evaluates); tasks that came
    from a device buffer have no test images and are left out."""

    def __init__(self, names: list[str], sources: list[dict]):
        self.tasks = [open_task(s, n) for n, s in zip(names, sources, strict=True) if s.get("data") is not None]


def run_sources(res: dict) -> list[dict]:
    """Every task's record of a run's results.json; runs written before per-task records share one root."""
    if isinstance(res.get("task_data"), list):
        return res["task_data"]
    cfg = res["config"]
    return [{"data": cfg["data_root"], "max_train": cfg.get("max_train"), "task": n} for n in res["tasks"]]


def learning_stream(run: Path, data, tasks, *, normal=None, abnormal=None, mask=None, normal_test=None,
                    name: str | None = None, max_train: int | None = None):
    """The new tasks of a `learn` call, from `--data ROOT --tasks` or one `--normal/--abnormal` folder task (at
    most ``max_train`` normal training images each, default the run's own --max-train), and the step that
    keeps a folder task's dataset file in the run (RUN/datasets/vN.yaml; None for --data): it is written only
    once every check has passed, so a refused call leaves RUN as it was."""
    import shutil
    import tempfile

    from edgead.cl.run_folder import read_state
    from edgead.data.folder import stream_from_options
    from firmware_sim.atomic import atomic_write_bytes

    if max_train is None and (Path(run) / "state.json").is_file():  # the run's own --max-train, as `train` had it
        max_train = read_state(Path(run))["config"].get("max_train")
    if normal is None:
        return stream_from_options(data, tasks, max_train=max_train), None
    tmp = Path(tempfile.mkdtemp(prefix="edgead-learn-"))
    try:
        stream = stream_from_options(data, name or tasks, normal=normal, abnormal=abnormal, mask=mask,
                                     normal_test=normal_test, max_train=max_train, out=tmp)
        text = Path(stream.root).read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def prepare(version: int) -> None:
        stream.root = atomic_write_bytes(Path(run) / "datasets" / f"v{version}.yaml", text)

    return stream, prepare
