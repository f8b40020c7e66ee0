"""One writer per replay buffer file: an exclusive lock held for as long as a device has the buffer attached.

Every writer loads the file, changes it in memory and then appends to it or rewrites it from what it loaded,
so two writers at once would overwrite each other's records (the last write wins). The lock is ``fcntl.flock`` on a lock file
beside the buffer (``NAME.lock``, left in place: deleting it would let a third writer lock a fresh file while
the second still holds the old one). The kernel drops the lock when its holder exits or is killed, so a
crashed run never leaves the buffer locked. Without ``fcntl`` (not POSIX) there is no lock. Paths are
resolved first: a writer through a symlink and one through the real path take the same lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from firmware_sim.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the buffer at ``path``: beside the file it resolves to, so a symlink to a buffer and
    the buffer itself share one lock."""
    path = Path(os.path.realpath(path))
    return path.with_name(path.name + ".lock")


class BufferLock:
    """``with BufferLock(path, wait=...)``: exclusive use of the buffer file at ``path``.

    Args:
        path: the buffer file (it need not exist yet).
        wait: block until the holder is done; otherwise a second writer gets a UserError at once.
        notify: called with one message before waiting (e.g. a warning printer).
    """

    def __init__(self, path: str | os.PathLike, wait: bool = False, notify: Callable[[str], None] | None = None):
        self.path, self.wait, self.notify = Path(os.path.realpath(path)), wait, notify
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> BufferLock:
        if self._fd is not None or fcntl is None:
            return self
        lock = lock_path(self.path)
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"{lock}: cannot create the buffer's lock file ({e.strerror or e}); the folder must "
                            "be writable") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                if not self.wait:
                    raise UserError(f"{self.path}: the replay buffer is in use by another process (pid {holder}, "
                                    f"lock {lock}); two writers would overwrite each other's records. Wait for it "
                                    "to finish, or pass --wait to queue behind it") from None
                if self.notify:
                    self.notify(f"{self.path}: in use by pid {holder}; waiting for it (--wait)")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> BufferLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
