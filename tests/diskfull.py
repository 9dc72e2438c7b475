"""A small disk for tests: a real tmpfs where the machine allows mounting, else injected faults.

API (for tests/test_local_failures.py, tests/e2e/test_local_failures.py and the crash matrix):

```python
from tests.diskfull import small_disk

with small_disk(tmp_path / "out", 256 * 1024) as disk:   # mounts (or makes) the folder
    disk.real            # True: a tmpfs of that size is mounted there (root, mount allowed);
                         # False: an ordinary folder, faults injected in this process only
    disk.fill()          # no space left: real, a filler file takes every free byte
    disk.fill(leave=8192)          # ... all but about that much
    disk.free()          # the filler is gone (real), or injection stops
    disk.grow(4 << 20)   # real: `mount -o remount,size=...`; injected: the same as free()
    disk.read_only()     # real: `mount -o remount,ro`; injected: EROFS and ST_RDONLY
    disk.writable()      # back to read-write
    disk.free_bytes()    # what statvfs says now
    disk.inject(monkeypatch)  # injected mode only (a no-op when real): while full or read
                              # only, `runner.disk._atomic.write_all` (the image write boundary)
                              # raises OSError(ENOSPC / EROFS) for files under the folder,
                              # `Store._commit` raises SQLite's "database or disk is full"
                              # (SQLITE_FULL) for a database under it, and os.statvfs
                              # reports ST_RDONLY for it
```

The mount is always undone when the block ends (lazily if a file is still open). Mounting
is tried only as root, and `ZBATCH_TEST_NO_MOUNT=1` forces injected mode, so both paths
can be run on one machine. For a subprocess (`zbatch run` in the crash matrix) only a real
disk reaches it: check `disk.real`, and where it is False use the in-process injection, and
say so. Nothing here skips a test: the same assertions run either way.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHUNK = 64 * 1024


def mount_permitted() -> bool:
    """Whether this process may mount a tmpfs (root, and not turned off for the test run)."""
    return os.geteuid() == 0 and os.environ.get("ZBATCH_TEST_NO_MOUNT", "") != "1"


class SmallDisk:
    """A folder on a small filesystem that a test can fill, free and make read-only."""

    def __init__(self, path: Path, size_bytes: int, *, real: bool) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.real = real
        self.full = False  # injected mode: writes fail with ENOSPC
        self.ro = False  # injected mode: writes fail with EROFS
        self._filler = path / ".filler"

    @property
    def kind(self) -> str:
        """`REAL (tmpfs)` or `INJECTED`: for messages and docs."""
        return "REAL (tmpfs)" if self.real else "INJECTED"

    def free_bytes(self) -> int:
        got = os.statvfs(self.path)
        return got.f_bavail * got.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take every free byte (but about `leave`)."""
        self.full = True
        if not self.real:
            return
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (CHUNK, 4096, 1):
                block = b"\0" * size
                try:
                    while True:
                        os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
            if leave:
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        finally:
            os.close(fd)

    def free(self) -> None:
        """Give the space back: the cause is fixed."""
        self.full = False
        if self.real:
            self._filler.unlink(missing_ok=True)

    def grow(self, size_bytes: int) -> None:
        """A larger disk (remount with a new size); the filler stays."""
        self.full = False
        self.size_bytes = size_bytes
        if self.real:
            _mount("-o", f"remount,size={size_bytes}", str(self.path))

    def read_only(self) -> None:
        self.ro = True
        if self.real:
            _mount("-o", "remount,ro", str(self.path))

    def writable(self) -> None:
        self.ro = False
        if self.real:
            _mount("-o", "remount,rw", str(self.path))

    def under(self, path: str | os.PathLike[str]) -> bool:
        try:
            Path(path).resolve().relative_to(self.path.resolve())
        except ValueError:
            return False
        return True

    def inject(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Injected mode: make the write boundaries fail as the full or read-only disk would."""
        if self.real:
            return
        import runner.disk._atomic
        from runner.store._store import Store

        write_all = runner.disk._atomic.write_all
        commit = Store._commit
        statvfs = os.statvfs

        def failing_write(fd: int, data: bytes) -> None:
            if self.under(os.readlink(f"/proc/self/fd/{fd}")):
                if self.ro:
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS))
                if self.full:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            write_all(fd, data)

        def failing_commit(store: Store, db: sqlite3.Connection) -> None:
            if store.path is not None and self.under(store.path):
                if self.ro:
                    raise _sqlite_error("attempt to write a readonly database", "SQLITE_READONLY")
                if self.full:
                    raise _sqlite_error("database or disk is full", "SQLITE_FULL")
            commit(store, db)

        def fake_statvfs(path: Any) -> Any:
            got = statvfs(path)
            if self.ro and self.under(path):
                values = list(got)
                values[8] |= os.ST_RDONLY  # f_flag
                return os.statvfs_result(values)
            return got

        monkeypatch.setattr(runner.disk._atomic, "write_all", failing_write)
        monkeypatch.setattr(Store, "_commit", failing_commit)
        monkeypatch.setattr(os, "statvfs", fake_statvfs)


def _sqlite_error(message: str, name: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorname = name
    return exc


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def small_disk(path: Path, size_bytes: int) -> Iterator[SmallDisk]:
    """`path` on a tmpfs of `size_bytes` (real) if this machine lets us mount, else an
    ordinary folder with injected faults; the mount is always undone."""
    path.mkdir(parents=True, exist_ok=True)
    real = False
    if mount_permitted():
        got = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            timeout=30,
        )
        real = got.returncode == 0
    try:
        yield SmallDisk(path, size_bytes, real=real)
    finally:
        if real:
            done = subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
            if done.returncode != 0:  # a file still open (a lingering connection)
                subprocess.run(["umount", "-l", str(path)], check=True, timeout=30)
