"""Output folders on the host: checked before any work, and errors while writing that name the folder.

Which folder a command may write or replace is decided by one rule, ``firmware_sim.outputs`` (the device side
cannot import edgead); :func:`check_out` applies it with the host's folder kinds (runs and sweeps written before
the marker file are recognised by their state.json / results.json / sweep.json) and raises EdgeadError.

A full disk, a file size limit (`ulimit -f`) or a folder that cannot be written should stop a command at its
start with the path in the message, not after an hour of training with a traceback. Temporary folders that
are renamed into place get the mode a plain `mkdir` would give (tempfile makes them owner-only).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgead.errors import EdgeadError
from firmware_sim import outputs as folder_rules
from firmware_sim.atomic import current_umask
from firmware_sim.sizes import format_size

# File systems that cannot reserve space say so with these; the plain write probe still ran.
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def os_error_text(e: OSError) -> str:
    """'PATH: reason' for an OSError, with the path when the error carries one."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.filename is None:
        return reason
    target = f" -> {e.filename2}" if e.filename2 is not None else ""
    return f"{e.filename}{target}: {reason}"


def _existing_ancestor(folder: Path) -> Path:
    """The folder itself if it exists, else its nearest existing parent (where mkdir would start)."""
    p = folder.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(folder: str | os.PathLike, *, what: str, largest_file: int = 0, total_bytes: int = 0) -> None:
    """Refuse, with the path and the reason, a folder the command could not fill.

    Nothing is created: the probe file goes into ``folder`` or, if it does not exist yet, into its nearest
    existing parent, and is removed at once.

    Args:
        folder: the output folder (need not exist yet).
        what: how the user named it, e.g. "--out".
        largest_file: bytes of the largest single file the command will write; space for it is reserved in
            the probe, which also catches a file size limit (`ulimit -f`).
        total_bytes: bytes the command will write in all; compared with the free space.
    """
    folder = Path(folder)
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise EdgeadError(f"{what} {folder}: cannot be created, {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgead-write-test-", dir=base)
    except OSError as e:
        raise EdgeadError(f"{what} {folder}: cannot write in {base} ({e.strerror or e})") from None
    try:
        if largest_file > 0:
            try:
                os.posix_fallocate(fd, 0, int(largest_file))
            except OSError as e:
                if e.errno not in _NO_FALLOCATE:
                    raise EdgeadError(f"{what} {folder}: cannot write a {format_size(largest_file)} file in {base} "
                                      f"({e.strerror or e}); free some space or choose another folder") from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    free = shutil.disk_usage(base).free
    if total_bytes > free:
        raise EdgeadError(f"{what} {folder}: {format_size(free)} free in {base}, this writes about "
                          f"{format_size(total_bytes)}; free some space or choose another folder")


@contextlib.contextmanager
def writing(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn an OSError raised while writing under ``folder`` into an EdgeadError naming it (a write() on a
    full disk carries no file name of its own)."""
    try:
        yield
    except OSError as e:
        raise EdgeadError(f"cannot write {what} in {folder}: {os_error_text(e)}") from None


def public_mkdtemp(prefix: str, dir: str | os.PathLike) -> Path:
    """``tempfile.mkdtemp`` with the mode a plain ``mkdir`` would give (not 0700): for folders that are
    renamed into place and published."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    os.chmod(path, 0o777 & ~current_umask())
    return path


def _json_dict(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_run(folder: Path) -> bool:
    """A run written before the marker: its state.json or its results.json says so (file names alone do not)."""
    from edgead.cl.results import SCHEMA

    state = _json_dict(folder / "state.json")
    if state is not None and isinstance(state.get("config"), dict) and "completed_tasks" in state:
        return True
    results = _json_dict(folder / "results.json")
    return results is not None and results.get("schema") == SCHEMA


def _is_category(folder: Path) -> bool:
    """A dataset category written by `edgead data convert` before the marker: its dataset.json says so."""
    from edgead.data.category_writer import DATASET_JSON, SCHEMA

    info = _json_dict(folder / DATASET_JSON)
    return info is not None and info.get("schema") == SCHEMA


def _is_sweep(folder: Path) -> bool:
    from edgead.sweep import SCHEMA, SWEEP_FILE

    sweep = _json_dict(folder / SWEEP_FILE)
    return sweep is not None and sweep.get("schema") == SCHEMA


HOST_KINDS = {**folder_rules.LEGACY, "run": _is_run, "bench": _is_sweep, "dataset": _is_category}


def check_out(out: str | os.PathLike, *, kind: str, inputs=(), force: bool = False, what: str = "--out",
              replaces: bool = True, flag: str = "--force") -> Path:
    """``firmware_sim.outputs.check_out`` with the host's folder kinds and EdgeadError; returns OUT resolved."""
    return folder_rules.check_out(out, kind=kind, inputs=inputs, force=force, what=what, error=EdgeadError,
                           legacy=HOST_KINDS, replaces=replaces, flag=flag)


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The kind of folder edgead wrote at ``folder`` (marker or legacy files), or None."""
    return folder_rules.folder_kind(Path(folder), HOST_KINDS)


def recheck(out: str | os.PathLike, real: Path, what: str = "--out") -> None:
    folder_rules.recheck(out, real, what=what, error=EdgeadError)
