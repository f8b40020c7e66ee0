"""Output folders: which folder a command may write, and which one it may replace. One rule for every command.

Every command that writes a folder (host: ``edgead train``, ``export``, ``data convert``, ``bench``; device:
``bundle``) decides with :func:`check_out`:

1. OUT is resolved first (symlinks followed, ``..`` applied), and every later step uses that real folder, so
   ``x/nosub/..`` is ``x`` from the first check on, never a folder that only appears after a ``mkdir``.
2. A folder that is an input of the command, contains one, or lies inside one is never removed or replaced.
3. An existing folder that holds anything is replaced only with ``--force``, and only if it is a folder of the
   same kind that this tool wrote: a run, an artifact, a bundle, a bench output. The kind is read from the
   marker file :data:`MARKER` that each command writes into its folder; folders written before the marker
   existed are recognised by their own files (an artifact's manifest.json, a bundle's firmware_sim/ beside its
   artifact/; the host adds runs and sweeps). File names alone never make a folder ours.
4. After the parents are created, OUT is resolved again (:func:`recheck`); a different answer (a symlink
   swapped in meanwhile) stops the command before anything is removed.

The device side cannot import edgead, so the rule lives here and ``edgead.outputs`` adds the host's kinds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from firmware_sim.atomic import atomic_write_json
from firmware_sim.errors import UserError

MARKER = ".edgead-folder.json"  # {"kind": ..., "tool": "edgead"}: written by the command that made the folder
MARKER_TOOL = "edgead"
# A killed command leaves its temporary sibling `.OUT.partial-<pid>-XXXX`; older versions had no pid in it.
_PARTIAL = re.compile(r"\.(?P<name>.+)\.partial-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+")
# publish() moves the previous OUT aside as `.OUT.old-<pid>-<ns>` for the moment of the swap.
_OLD = re.compile(r"\.(?P<name>.+)\.old-(?P<pid>\d+)-\d+")
_LEGACY_PARTIAL_AGE_S = 24 * 3600  # a pid-less partial folder this old belongs to no live command

Recogniser = Callable[[Path], bool]


def resolve(path: str | os.PathLike) -> Path:
    """The folder ``path`` names once symlinks are followed and ``..`` applied (it need not exist)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _is_artifact(folder: Path) -> bool:
    from firmware_sim.manifest import MANIFEST_NAME, SCHEMA

    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("schema") == SCHEMA


def _is_bundle(folder: Path) -> bool:
    return (folder / "firmware_sim" / "__init__.py").is_file() and _is_artifact(folder / "artifact")


# What folders written before the marker look like, per kind (the host adds 'run' and 'bench').
LEGACY: dict[str, Recogniser] = {"artifact": _is_artifact, "bundle": _is_bundle}


def read_marker(folder: Path) -> str | None:
    """The kind written in ``folder``'s marker file, or None (no marker, or not one of ours)."""
    path = folder / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != MARKER_TOOL or not isinstance(data.get("kind"), str):
        return None
    return data["kind"]


def folder_kind(folder: Path, legacy: dict[str, Recogniser] | None = None) -> str | None:
    """The kind of folder this tool wrote at ``folder`` (its marker, else its own files), or None."""
    kind = read_marker(folder)
    if kind is not None:
        return kind
    for name, looks_like in (LEGACY if legacy is None else legacy).items():
        if looks_like(folder):
            return name
    return None


def write_marker(folder: str | os.PathLike, kind: str) -> Path:
    """Mark ``folder`` as a ``kind`` this tool wrote (atomically; the folder must exist)."""
    return atomic_write_json(Path(folder) / MARKER, {"tool": MARKER_TOOL, "kind": kind})


def _relation(out: Path, inp: Path) -> str | None:
    if out == inp:
        return "is"
    if out in inp.parents:
        return "contains"
    if inp in out.parents:
        return "lies inside"
    return None


def _shown(out: str | os.PathLike, real: Path) -> str:
    return str(out) if resolve(out) == Path(os.path.abspath(os.fspath(out))) else f"{out} (= {real})"


def _a(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def check_out(out: str | os.PathLike, *, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
              force: bool = False, what: str = "OUT", error: type[UserError] = UserError,
              legacy: dict[str, Recogniser] | None = None, replaces: bool = True, flag: str = "--force") -> Path:
    """Decide whether a command may write the ``kind`` folder ``out``; returns it resolved (use that path).

    Args:
        out: the output folder as the user gave it (need not exist).
        kind: what the command writes there: 'run', 'artifact', 'bundle', 'bench', ...
        inputs: the files and folders the command reads; ``out`` may not be, contain or lie inside one
            (a new folder inside an input is allowed: nothing of the input is removed).
        force: the user asked to replace an existing folder (``--force``).
        what: how the user named OUT, for messages ("--out", "OUT").
        error: the exception type raised (the host passes EdgeadError).
        legacy: kind -> recogniser of folders written before the marker (default: artifact and bundle).
        replaces: False for commands that write into OUT instead of replacing it (a non-empty OUT of the same
            kind is then accepted without ``force``; the caller decides what it may overwrite).
        flag: the option that sets ``force``, for messages ("--force", "--overwrite").
    Raises:
        ``error`` naming OUT, the input or the folder's content, and what to do instead.
    """
    real = resolve(out)
    shown = _shown(out, real)
    if real.exists() and not real.is_dir():
        raise error(f"{what} {shown}: exists and is not a folder")
    occupied = real.is_dir() and any(real.iterdir())
    for inp in inputs:
        if inp is None:
            continue
        rel = _relation(real, resolve(inp))
        if rel is None or (rel == "lies inside" and not occupied):
            continue
        raise error(f"{what} {shown}: {rel} the input {inp}; an output folder must never be, contain or replace "
                    f"what the command reads: choose a folder apart from it")
    if not occupied:
        return real
    found = folder_kind(real, legacy)
    if found == kind and not replaces:
        return real
    if not force:
        hint = f"pass {flag} to replace the {kind} it holds" if found == kind else "choose an empty or new folder"
        raise error(f"{what} {shown}: already exists and is not empty ({_listing(real)}); {hint}")
    if found != kind:
        held = f"{_a(found)} folder" if found else f"files this tool did not write as {_a(kind)} ({_listing(real)})"
        raise error(f"{what} {shown}: {flag} replaces only {_a(kind)} folder written by edgead (marked by its "
                    f"{MARKER}), and this one holds {held}; remove it yourself or choose another folder")
    return real


def recheck(out: str | os.PathLike, real: Path, what: str = "OUT", error: type[UserError] = UserError) -> None:
    """After creating OUT's parents: OUT must still resolve to the folder that was checked."""
    now = resolve(out)
    if now != real:
        raise error(f"{what} {out}: now leads to {now}, not {real} as checked a moment ago (a symlink changed); "
                    f"nothing was written")


def clean_partials(out: Path) -> list[Path]:
    """Remove the temporary siblings ``.OUT.partial-*`` that killed commands writing ``out`` left behind.

    A folder named with a pid is removed when that process is gone; one without a pid (older versions) when it
    has not changed for a day. A previous OUT that a killed :func:`publish` had moved aside is put back if OUT
    is missing, else removed. Returns what was removed.
    """
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in list(out.parent.iterdir()):  # entries may be renamed below
        old = _OLD.fullmatch(p.name)
        if old is not None and old["name"] == out.name and p.is_dir() and not _alive(int(old["pid"])):
            if not out.exists():
                os.replace(p, out)  # killed between the two renames: the previous folder is still the valid one
                continue
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                removed.append(p)
            continue
        m = _PARTIAL.fullmatch(p.name)
        if m is None or m["name"] != out.name or p.is_symlink() or not p.is_dir():
            continue
        if m["pid"] is not None:
            stale = not _alive(int(m["pid"]))
        else:
            try:
                stale = time.time() - p.stat().st_mtime > _LEGACY_PARTIAL_AGE_S
            except OSError:
                stale = False
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                removed.append(p)
    return removed


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out`` (checked by :func:`check_out`): an existing ``out`` is moved
    aside first and removed only once the new one is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)  # put the previous folder back: nothing is lost
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def partial_prefix(out: Path) -> str:
    """The prefix of OUT's temporary sibling (``.OUT.partial-<pid>-``), which :func:`clean_partials` knows."""
    return f".{out.name}.partial-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or an impossible pid): leave its folder alone
    return True
