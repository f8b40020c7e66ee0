"""Flash-friendly replay buffer writes: a buffered frame writes one record, not the whole file.

A buffer in append mode (its header states ``log_reserve``; a device makes its buffers so) keeps every sample as
a *log record* (kind 3): the usual record with 24 more bytes in front of the latent, ``seq`` (0 in a compacted
file, then 1, 2, ... per write), the task's ``offered`` count, and the slot it *frees* (file offset and seq of
the record it replaced, offset 0 for none). Reservoir sampling replaces one record by another of the same
size, so the new record goes into the slot the previous replacement freed (the *spare*), or at the end of the
file when there is none; the record it replaces becomes the next spare. A task's count of offered frames
changes without a write when a frame is not kept; the end of a run appends one small task-state record
(kind 4: the same 24 bytes, no latent) per task whose count changed.

Reading: a record is live unless a later intact record frees it. A write is committed when its record is
intact (its CRC covers everything), so the one write a kill can interrupt is the newest, which went either
into the spare (the slot freed by the newest intact log sample) or at the end of the file, after
``log_start`` (the compacted file's length, in the header). Damage at exactly those places is an interrupted
write, not a lost record: nothing that was reported as buffered was there. Damage anywhere else is counted as
lost, as in any buffer file.

Budget. The file never exceeds ``budget_bytes``. The samples share the budget less the header and
``log_reserve``; the reserve holds the spare slot (one log record) and up to ``TASK_STATES`` task-state records.
A write that would pass the budget, a new task (the shares change), a name, damage found on load, or any
change other than one frame replacing one record compacts the file instead: the whole buffer written afresh,
atomically (``atomic_write``), log empty again. In steady state that is rare: roughly every ``TASK_STATES``
runs, and once per new task.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

LOG = struct.Struct("<IQQI")  # seq, offered, freed offset (0: none), freed seq
LOG_FIELDS = LOG.size  # 24 bytes in front of a log sample's latent; a task-state record is only these
KIND_LOG_SAMPLE, KIND_LOG_TASK = 3, 4
TASK_STATES = 16  # task-state records the reserve has room for before a compaction


@dataclass
class FileState:
    """What this process knows of the buffer file it last read or wrote (append mode only)."""

    path: Path  # the resolved path (a symlink's target: the link itself is never replaced)
    size: int  # bytes of the file (a file found damaged is compacted before any append)
    log_start: int
    next_seq: int
    spare: int | None  # the free slot the next sample goes to, None: the end of the file
    where: dict[int, tuple[int, int]] = field(default_factory=dict)  # id(record) -> (offset, seq) in the file
    offered: dict[int, int] = field(default_factory=dict)  # each task's offered count as the file states it


def resolved(path: str | os.PathLike) -> Path:
    """The path a buffer is locked and written at: symlinks and '..' resolved, so a link and its target are
    one buffer with one lock, and a save never replaces the link by a file."""
    return Path(os.path.realpath(path))


def write_at(path: Path, writes: list[tuple[int, bytes]]) -> int:
    """Write each (offset, bytes) in order, each made durable before the next; returns bytes written."""
    fd = os.open(path, os.O_WRONLY)
    try:
        done = 0
        for offset, data in writes:
            view = memoryview(data)
            while view:  # pwrite may write less than asked (a signal, a full disk)
                n = os.pwrite(fd, view, offset)
                view, offset, done = view[n:], offset + n, done + n
            os.fsync(fd)  # this record is durable before the next write may free the slot it replaced
        return done
    except OSError as e:  # a full disk or a file size limit: name the buffer (pwrite's error has no file name)
        raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        os.close(fd)
