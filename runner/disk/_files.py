"""Atomic file writes (temp file, fsync, rename, directory fsync) and image verification.

Blocking by design: async callers run these through `anyio.to_thread.run_sync`.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from runner.disk._faults import disk_error
from runner.disk._private import open_private
from runner.errors import BatchInUse


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import (os.umask can only be read by setting it): new files get 0o666 & ~umask
# like any other program's, not mkstemp's private 0o600.
_FILE_MODE = 0o666 & ~_current_umask()


_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webP": "webp"}
_CELL_KEY = re.compile(r"[0-9a-f]{8,64}")


def image_path(cell_key: str, index: int, output_format: str) -> PurePosixPath:
    """Where an image lives under the output folder: `images/<ab>/<cell key>_<index>.<ext>`.

    Made only from our own cell key (hex), the image index and the requested format, never
    from anything the API returned; the two-character folder keeps folders small.
    """
    if not _CELL_KEY.fullmatch(cell_key):
        raise ValueError(f"cell key {cell_key!r} is not 8-64 lowercase hex characters")
    if index < 0:
        raise ValueError(f"image index must be >= 0, not {index}")
    if output_format not in _EXTENSIONS:
        allowed = ", ".join(_EXTENSIONS)
        raise ValueError(f"output format {output_format!r} is not one of {allowed}")
    name = f"{cell_key}_{index}.{_EXTENSIONS[output_format]}"
    return PurePosixPath("images", cell_key[:2], name)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the whole new one, never half.

    The parent folder is created if needed. After a crash at any point, `path` holds either
    its previous content or `data`; a stray `.tmp` file may remain and is harmless. When the
    disk refuses (full, read-only, an I/O error) the temp file is removed, `path` is left as
    it was, and a `LocalDiskError` naming the folder and its free space is raised.
    """
    try:
        _atomic_write(path, data)
    except OSError as exc:
        translated = disk_error(exc, path.parent, f"writing {path.name}")
        if translated is None:
            raise
        raise translated from exc


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, _FILE_MODE)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
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
    return remove_stray_temps(out / "images") + remove_stray_temps(out, recursive=False)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class InvalidImage(ValueError):
    """Downloaded bytes are not the image that was asked for (corrupt, truncated, wrong size)."""


@dataclass(frozen=True)
class VerifiedImage:
    """What verification learned about an image's bytes."""

    sha256: str
    size_bytes: int
    width: int
    height: int
    format: str


def verify_image(
    data: bytes, *, width: int, height: int, max_bytes: int = 64 * 1024 * 1024
) -> VerifiedImage:
    """Check that `data` decodes fully as an image of exactly `width` x `height`.

    Raises InvalidImage naming what is wrong. Blocking (Pillow decodes the whole image):
    call it through `anyio.to_thread.run_sync` from async code.
    """
    if len(data) > max_bytes:
        raise InvalidImage(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes every byte: truncation and corruption surface here
            got_w, got_h = img.size
            fmt = (img.format or "").lower()
    except (OSError, SyntaxError, Image.DecompressionBombError, ValueError) as exc:
        raise InvalidImage(f"bytes do not decode as an image: {exc}") from exc
    if (got_w, got_h) != (width, height):
        raise InvalidImage(f"image is {got_w}x{got_h}, expected {width}x{height}")
    return VerifiedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        width=got_w,
        height=got_h,
        format=fmt,
    )


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
