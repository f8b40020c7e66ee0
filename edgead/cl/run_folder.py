"""What a run folder (`edgead train --out`) holds, and whether a new or resumed run may use it.

A run writes state.json, results.json, checkpoints/task_NN.pt and memory/after_task_NN.{edgeadrb,npz}
(each atomically, via hidden `.NAME.*.tmp` files). A new run refuses a folder holding anything else
unless --force, so a user's files are never overwritten; a folder that already holds a run needs --resume.
Resuming compares the saved configuration with the new one, with paths compared as folders on disk:
`d`, `./d/` and `/abs/path/d` are the same.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from edgead.cl.results import SCHEMA
from edgead.engine.thresholds import LEGACY_THRESHOLD_RULE
from edgead.errors import EdgeadError

STATE_NAME = "state.json"
PATH_KEYS = ("data_root", "device_buffer", "device_trunk")  # config values that name files or folders
_TMP = re.compile(r"\..+\.tmp|\.edgead-write-test-.+")  # atomic writes' and edgead.outputs' probe files
_OWN = {"checkpoints": re.compile(r"task_\d{2}\.pt"), "memory": re.compile(r"after_task_\d{2}\.(edgeadrb|npz)")}


def config_path(value: str | os.PathLike | None) -> str | None:
    """How a path is kept in a run's configuration: absolute and normalised (no trailing '/', no '..'),
    symlinks kept as the user gave them."""
    return None if value is None else os.path.abspath(os.fspath(value))


def _is_run_file(entry: Path) -> bool:
    """True for what a run (or one killed while saving its first task) leaves in its folder."""
    if _TMP.fullmatch(entry.name):
        return True
    if entry.name in _OWN and entry.is_dir():
        return all(_OWN[entry.name].fullmatch(p.name) or _TMP.fullmatch(p.name) for p in entry.iterdir())
    if entry.name == "results.json" and entry.is_file():
        try:
            return json.loads(entry.read_text()).get("schema") == SCHEMA
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return False
    return False


def check_new_run_folder(out: Path, *, force: bool) -> None:
    """Refuse to start a run in ``out`` if it holds a run (use --resume) or files that are not a run's."""
    if out.exists() and not out.is_dir():
        raise EdgeadError(f"--out {out}: exists and is not a folder")
    if (out / STATE_NAME).exists():
        raise EdgeadError(f"{out}: already holds a run (pass --resume to continue it, or choose another --out)")
    if not out.is_dir() or force:
        return
    foreign = sorted(p.name for p in out.iterdir() if not _is_run_file(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        replaced = " (replacing its results.json)" if "results.json" in foreign else ""
        raise EdgeadError(f"--out {out}: not empty and not an edgead run (holds {shown}); choose an empty or new "
                          f"folder, or pass --force to write the run's files beside them{replaced}")


def read_state(out: Path) -> dict:
    """The saved state of a run to resume, checked for the keys resuming needs."""
    path = out / STATE_NAME
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
    return sorted(k for k in set(saved) | set(current) if not _same(k, saved.get(k), current.get(k)))
