"""Folder fsyncs shared by the writers that renamed into one folder at about the same time.

A rename is durable once its folder has been fsynced by an fsync that *started after* the
rename: one that was already running may have read the folder's entries before it. So a
writer that has renamed a file calls `FolderSyncs.sync(folder)`, which returns only once an
fsync of `folder` that started after the call has finished. When none is running, the caller
runs one; when one is, the caller waits for it to end and then for the next, which one of the
waiting callers runs for all of them. Many downloaders renaming into `images/<ab>/` at once
share one folder fsync instead of paying one each. A failed fsync counts for nobody: its
error goes to the caller that ran it, and each waiter tries again itself.

Blocking by design, for worker threads (the downloaders' `anyio.to_thread.run_sync`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Folder:
    started: int = 0  # fsyncs of this folder begun so far (the last one's number)
    done: int = 0  # the number of the last one that finished without an error
    running: bool = False
    waiting: int = 0  # callers blocked on a running fsync (the tests' window into sharing)


class FolderSyncs:
    """Folder fsyncs, coalesced per folder among the threads that ask for them."""

    def __init__(self, fsync: Callable[[Path], None] = _fsync_folder) -> None:
        self._fsync = fsync
        self._changed = threading.Condition()
        self._folders: dict[Path, _Folder] = {}

    def sync(self, folder: Path) -> None:
        """Return once an fsync of `folder` that began after this call has succeeded.

        Call it after the rename into `folder` has returned. Raises the fsync's OSError when
        the one this caller ran failed.
        """
        with self._changed:
            state = self._folders.setdefault(folder, _Folder())
            wanted = state.started + 1  # any fsync numbered from here on starts after now
            while state.done < wanted:
                if state.running:
                    state.waiting += 1
                    self._changed.wait()
                    state.waiting -= 1
                    continue
                self._run_one(folder, state)

    def waiting(self, folder: Path) -> int:
        """How many callers are blocked on a running fsync of `folder` (for tests)."""
        with self._changed:
            state = self._folders.get(folder)
            return 0 if state is None else state.waiting

    def _run_one(self, folder: Path, state: _Folder) -> None:
        """Run one fsync of `folder` with the lock released; called holding it."""
        state.running = True
        state.started += 1
        number, ok = state.started, False
        self._changed.release()
        try:
            self._fsync(folder)
            ok = True
        finally:
            self._changed.acquire()
            state.running = False
            if ok:
                state.done = number
            self._changed.notify_all()
