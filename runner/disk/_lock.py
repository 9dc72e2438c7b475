"""One runner per batch: the batch lock beside `batch.sqlite`, and the platforms it runs on.

The lock is `fcntl.flock`, which Linux and macOS have and Windows has not. zbatch supports
POSIX systems only (pyproject's classifiers, README): on a Python without `fcntl`,
`platform_problem()` says so in one line and `zbatch` refuses every command with it (exit
2, nothing done), instead of failing half way with `No module named 'fcntl'`. A portable
lock alone would not be enough there: the atomic writes fsync folders (`os.O_DIRECTORY`),
private files are chmod'ed by descriptor, and a run stops on SIGTERM, none of which Windows
offers in the same way.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path
from types import ModuleType

from runner.disk._faults import disk_error
from runner.disk._private import open_private
from runner.errors import BatchInUse, UsageError

fcntl: ModuleType | None
try:
    import fcntl as _fcntl

    fcntl = _fcntl
except ImportError:  # Windows: see platform_problem()
    fcntl = None


def platform_problem() -> str | None:
    """One line saying why zbatch cannot run on this platform, or None when it can."""
    if fcntl is None or not hasattr(os, "O_DIRECTORY"):
        return (
            f"zbatch runs on Linux and macOS only, not on this platform ({sys.platform}): its"
            " batch lock needs fcntl.flock; on Windows, run it under WSL"
        )
    return None


def _flock() -> ModuleType:
    if fcntl is None:
        raise UsageError(platform_problem() or "fcntl is missing")
    return fcntl


class BatchLock:
    """One runner per batch: an exclusive `flock` on `<db>.lock`, released even by kill -9."""

    def __init__(self, db_path: Path) -> None:
        self.path = lock_path(db_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        lock = _flock()
        try:
            fd = open_private(self.path, os.O_RDWR)
        except OSError as exc:
            translated = disk_error(exc, self.path.parent, f"creating {self.path.name}")
            if translated is None:
                raise
            raise translated from exc
        try:
            lock.flock(fd, lock.LOCK_EX | lock.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise BatchInUse(
                f"{self.path.parent} is in use by {holder}: one runner per batch at a time"
                " (let it finish, or stop it with Ctrl-C, then run again)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}@{socket.gethostname()}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            lock = _flock()
            lock.flock(self._fd, lock.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_path(db_path: Path) -> Path:
    """The batch lock's file: `<db>.lock` beside the database."""
    return db_path.with_name(db_path.name + ".lock")


def lock_held(db_path: Path) -> bool:
    """Whether a process (a `zbatch run`, `retry`, `cancel`) holds the batch lock of `db_path`.

    Probes with a shared, non-blocking flock released at once: a runner starting in that
    instant could find the batch in use, so callers probe only when nothing is open.
    """
    lock = _flock()
    try:
        fd = os.open(lock_path(db_path), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        lock.flock(fd, lock.LOCK_SH | lock.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # closing releases a lock it got
    return False
