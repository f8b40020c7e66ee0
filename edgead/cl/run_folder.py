"""What a run folder (`edgead train --out`) holds, and whether a new or resumed run may use it.

A run writes state.json, results.json, config.yaml, dataset.yaml, checkpoints/task_NN.pt,
memory/after_task_NN.{edgeadrb,npz} and calibration/ (each atomically, via hidden `.NAME.*.tmp` files). Before it
writes any of them it claims the folder with the marker file of firmware_sim.outputs (kind "run"): a folder
is this tool's run because it says so, never because its file names look like a run's (a user's lone
checkpoints/task_00.pt is the user's). A new run refuses a folder holding anything else unless --force, and
even then never writes over a file of the same name; a marked run that stopped before its first task finished
(a bad image, a full disk, a kill) is started again by the same command; one with a finished task needs --resume.
Resuming compares the saved configuration with the new one, with paths compared as folders on disk:
`d`, `./d/` and `/abs/path/d` are the same.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from edgead.cl.run_log import EPOCHS_NAME, LOG_NAME
from edgead.engine.thresholds import LEGACY_THRESHOLD_RULE
from edgead.errors import EdgeadError
from edgead.outputs import check_writable
from firmware_sim import outputs
from firmware_sim.anomaly_map import LEGACY_SCORE

STATE_NAME = "state.json"
PATH_KEYS = ("data_root", "device_buffer", "device_trunk")  # config values that name files or folders
_TMP = re.compile(r"\..+\.tmp|\.edgead-write-test-.+")  # atomic writes' and edgead.outputs' probe files
# What a run writes at the top of its folder: --force writes a run beside a user's files, never over these.
RUN_NAMES = (STATE_NAME, "results.json", "config.yaml", "dataset.yaml", "checkpoints", "memory", "calibration",
             LOG_NAME, EPOCHS_NAME)


def config_path(value: str | os.PathLike | None) -> str | None:
    """How a path is kept in a run's configuration: absolute and normalised (no trailing '/', no '..'),
    symlinks kept as the user gave them."""
    return None if value is None else os.path.abspath(os.fspath(value))


def is_marked_run(out: Path) -> bool:
    """Whether ``out`` carries this tool's run marker (written before any other file of the run)."""
    return outputs.read_marker(out) == "run"


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def check_new_run_folder(out: Path, *, force: bool) -> Path:
    """Refuse to start a run in ``out`` if it holds a run (use --resume) or files that are not this run's;
    otherwise claim it: create it and write the run marker. Returns the folder resolved (symlinks, '..')."""
    real = outputs.resolve(out)
    if real.exists() and not real.is_dir():
        raise EdgeadError(f"--out {out}: exists and is not a folder")
    if (real / STATE_NAME).exists():
        raise EdgeadError(f"{out}: already holds a run (pass --resume to continue it, or choose another --out)")
    if real.is_dir() and not is_marked_run(real):
        # Not this tool's run: only atomic writes' and write probes' leftovers count as empty.
        foreign = sorted(p.name for p in real.iterdir() if not _TMP.fullmatch(p.name))
        clash = [n for n in foreign if n in RUN_NAMES]
        if foreign and not force:
            raise EdgeadError(f"--out {out}: not empty and not an edgead run (holds {_shown(foreign)}); choose an "
                              f"empty or new folder, or pass --force to write the run's files beside them")
        if clash:
            raise EdgeadError(f"--out {out}: holds {_shown(clash)}, which a run would write over, and no edgead "
                              f"run marker ({outputs.MARKER}); --force writes beside a user's files, never over "
                              f"them: choose an empty or new folder")
    check_writable(real, what="--out")  # a file in the way, a read-only or full disk: said before any write
    try:
        real.mkdir(parents=True, exist_ok=True)
        if not is_marked_run(real):
            outputs.write_marker(real, "run")
    except OSError as e:
        raise EdgeadError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return real


def read_state(out: Path) -> dict:
    """The saved state of a run to resume, checked for the keys resuming needs."""
    path = out / STATE_NAME
    if not path.is_file() and is_marked_run(out):
        raise EdgeadError(f"{out}: nothing to resume, no task of this run finished yet (it stopped during its first "
                          f"task); run the same command without --resume to start it again in this folder")
    if not path.is_file():
        raise EdgeadError(f"{path}: nothing to resume (no completed task in {out})")
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EdgeadError(f"{path}: not readable run state ({e})") from None
    if not (isinstance(state, dict) and isinstance(state.get("config"), dict)
            and isinstance(state.get("completed_tasks"), int) and state["completed_tasks"] >= 0):
        raise EdgeadError(f"{path}: not an edgead run state (expected 'config' and 'completed_tasks')")
    return state


def _same(key: str, saved, current) -> bool:
    if key in PATH_KEYS and saved is not None and current is not None:
        # Old runs kept paths as given, relative to where they were started: compare the folders themselves.
        return Path(saved).resolve() == Path(current).resolve()
    return json.dumps(saved) == json.dumps(current)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Keys of the run configuration whose values differ (paths compared as folders on disk)."""
    current = json.loads(json.dumps(current))  # tuples -> lists, as they were saved
    if isinstance(saved.get("train"), dict) and "threshold_rule" not in saved["train"]:
        # runs saved before the rule was recorded were calibrated with the legacy rule
        saved = {**saved, "train": {**saved["train"], "threshold_rule": LEGACY_THRESHOLD_RULE}}
    if isinstance(saved.get("detector"), dict) and "score" not in saved["detector"]:
        # runs saved before score post-processing was recorded scored by the map's maximum
        saved = {**saved, "detector": {**saved["detector"], "score": LEGACY_SCORE}}
    saved, current = _budget_as_trained(saved), _budget_as_trained(current)
    return sorted(k for k in set(saved) | set(current) if not _same(k, saved.get(k), current.get(k)))


def _budget_as_trained(config: dict) -> dict:
    """Explicit epochs or steps make the budget floor's fields irrelevant (runs saved before the floor existed
    have neither): leave them out of the comparison."""
    train = config.get("train")
    if not isinstance(train, dict) or (train.get("epochs") is None and train.get("steps") is None):
        return config
    return {**config, "train": {k: v for k, v in train.items() if k not in ("min_steps", "floor_steps",
                                                                              "floor_batch")}}
