"""Every file zbatch writes is written here: under a temp name beside its target, then renamed.

A reader (a trainer, a browser, the next run) sees the old file or the whole new one, never
half of one. `AtomicFile` is the one implementation: `atomic_write_bytes` (images, the
gallery) is a whole write through it, and `atomic_write_hashed` (the downloader's images) one
that hashes the bytes as it writes them; `metadata.jsonl` and the exports stream through it;
Parquet and tar writers, which open files by name, write to its `tmp` path. `durable`
(the default) fsyncs the file before the rename and the folder after it, so a committed
file survives a power cut (the folder's fsync may be one shared with other writers through
`FolderSyncs`: one that started after this rename); captions, derived from the record and
rewritten by the next refresh when they differ, skip both.

A crash leaves at most a `.<name>.<random>.tmp` file beside the target, which
`sweep_batch_temps` removes under the batch lock. Blocking by design: async callers run
these through `anyio.to_thread.run_sync`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from runner.disk._faults import disk_error
from runner.disk._folder_syncs import FolderSyncs
from runner.disk._out_folder import OutFolder

# New files get 0o666 & ~umask, like any other program's (os.open applies the umask).
_NEW_FILE_MODE = 0o666

# A hashed write goes a slice at a time: each slice is hashed, then copied to the kernel while
# it is still in the CPU's cache, so the bytes make one trip through memory, not two.
_HASHED_SLICE = 256 * 1024


class AtomicFile:
    """A new file at `tmp` beside `target`, renamed over `target` by `commit`.

    ```python
    with AtomicFile(path) as file:      # commit on success, abort on an exception
        file.write(b"...")             # or file.text().write("..."), or open file.tmp
    ```
    """

    def __init__(
        self, target: Path, *, durable: bool = True, folder_syncs: FolderSyncs | None = None
    ) -> None:
        self.target = target
        self.durable = durable
        self.folder_syncs = folder_syncs  # the folder's fsync shared with other writers
        self.tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
        except FileNotFoundError:  # the folder is made once, not asked after on every write
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
        self._fd: int | None = fd
        self._text: IO[str] | None = None

    def write(self, data: bytes, *, digest: hashlib._Hash | None = None) -> None:
        """Write every byte of `data` (unbuffered: a full disk fails here, not at close).

        `digest` (a hashlib object) is fed the same bytes, slice by slice as they are written.
        """
        fd = self._open_fd()
        if digest is None:
            write_all(fd, data)
            return
        view = memoryview(data)
        for at in range(0, len(view), _HASHED_SLICE):
            piece = view[at : at + _HASHED_SLICE]
            digest.update(piece)
            write_all(fd, piece)

    def text(self) -> IO[str]:
        """A UTF-8 text handle on the temp file (buffered; flushed by `commit`)."""
        if self._text is None:
            self._text = os.fdopen(self._open_fd(), "w", encoding="utf-8")
        return self._text

    def release(self) -> Path:
        """Close our handle on the temp file, for a writer that opens `tmp` by name."""
        self._close()
        return self.tmp

    def commit(self) -> None:
        """Flush, fsync (durable), rename over the target, fsync the folder (durable)."""
        try:
            if self._text is not None:
                self._text.flush()
            if self.durable:
                if self._fd is not None:
                    os.fsync(self._fd)
                else:
                    _fsync_path(self.tmp)
        finally:
            self._close()
        os.replace(self.tmp, self.target)
        if self.durable:
            if self.folder_syncs is not None:
                self.folder_syncs.sync(self.target.parent)
            else:
                fsync_dir(self.target.parent)

    def abort(self) -> None:
        """Close and remove the temp file; the target is left as it was. Safe to call twice."""
        try:
            self._close()
        except OSError:
            pass  # flushing a buffered handle fails again on a full disk
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.tmp} was released or closed")
        return self._fd

    def _close(self) -> None:
        text, fd = self._text, self._fd
        self._text, self._fd = None, None
        if text is not None:
            text.close()  # closes fd too
        elif fd is not None:
            os.close(fd)


def atomic_write_bytes(
    path: Path, data: bytes, *, durable: bool = True, folder_syncs: FolderSyncs | None = None
) -> None:
    """Write `data` to `path` so a reader sees the old file or the whole new one, never half.

    The parent folder is created if needed. After a crash at any point, `path` holds either
    its previous content or `data`; a stray `.tmp` file may remain and is harmless. When the
    disk refuses (full, read-only, an I/O error) the temp file is removed, `path` is left as
    it was, and a `LocalDiskError` naming the folder and its free space is raised.
    `folder_syncs` shares the folder's fsync with other threads writing into it.
    """
    _write_whole(path, data, durable=durable, folder_syncs=folder_syncs, digest=None)


def atomic_write_hashed(path: Path, data: bytes, *, folder_syncs: FolderSyncs | None = None) -> str:
    """`atomic_write_bytes`, durable, hashing `data` while writing it: its sha256 (hex).

    When it returns, the file is in place, fsynced, and its folder fsynced after the rename
    (by a shared fsync that began after it when `folder_syncs` is given).
    """
    digest = hashlib.sha256()
    _write_whole(path, data, durable=True, folder_syncs=folder_syncs, digest=digest)
    return digest.hexdigest()


def _write_whole(
    path: Path,
    data: bytes,
    *,
    durable: bool,
    folder_syncs: FolderSyncs | None,
    digest: hashlib._Hash | None,
) -> None:
    try:
        with AtomicFile(path, durable=durable, folder_syncs=folder_syncs) as file:
            file.write(data, digest=digest)
    except OSError as exc:
        translated = disk_error(exc, path.parent, f"writing {path.name}")
        if translated is None:
            raise
        raise translated from exc


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of `data` to `fd` (unbuffered: a full disk fails here, not at close).

    The write boundary of images: tests inject ENOSPC here where they cannot mount a small
    filesystem (tests/diskfull.py).
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def remove_stray_temps(folder: Path, *, recursive: bool = True) -> int:
    """Delete the temp files a crash left in `folder` (and below it); return how many.

    Only names our atomic writers make (`.<name>.<random>.tmp`) are touched. Run it while
    the batch lock is held, so no writer of the run is mid-write.
    """
    removed = 0
    if folder.is_dir():
        for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def sweep_batch_temps(out: Path) -> int:
    """The temp files a killed run can leave: under `images/`, and `metadata.jsonl`'s in OUT.

    Not `gallery/` or `export/`: those are written by commands that take no batch lock.
    """
    folder = OutFolder(out)
    return remove_stray_temps(folder.images) + remove_stray_temps(folder.root, recursive=False)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable."""
    _fsync_path(folder)


def _fsync_path(path: Path) -> None:
    """fsync a file's contents, or a folder's entries, by its name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
