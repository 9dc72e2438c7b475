"""One runner per batch: the batch lock beside `batch.sqlite`."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from runner.disk._faults import disk_error
from runner.disk._private import open_private
from runner.errors import BatchInUse


class BatchLock:
    """One runner per batch: an exclusive `flock` on `<db>.lock`, released even by kill -9."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = open_private(self.path, os.O_RDWR)
        except OSError as exc:
            translated = disk_error(exc, self.path.parent, f"creating {self.path.name}")
            if translated is None:
                raise
            raise translated from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
