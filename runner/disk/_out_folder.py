"""The output folder of `zbatch run`, checked before anything is written into it.

A run refuses an existing ``out`` folder that every account on the machine may write to
(``o+w``: a folder chmod'ed 777, or ``/tmp`` itself). Anyone could then replace an image
after its sha256 was recorded, plant a ``batch.sqlite`` or a lock file, or delete the
record of what was paid for. ``--allow-shared-out`` accepts such a folder on purpose. A
group-writable folder is allowed: team folders are group-writable by design, and the group
is a choice its owner made. A folder that does not exist yet is fine: the run creates it
with the user's umask. A folder the user cannot write to is refused here too, by name,
rather than as a traceback from the first write. So is a folder (or, for one to be made,
its nearest existing parent) on a read-only filesystem: `ReadOnlyDisk`, exit 6, before
anything is written or spent (root may write anywhere, but not there).

A path the run could never make a folder of is refused by name too (exit 2), rather than
as a traceback from the log file: a symbolic link to nowhere, on the way or at the end (a
drive that is not mounted), and a filesystem with no storage (`/proc`, `/sys`).
`zbatch plan` warns about each of these (`out_folder_problem`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runner.errors import NotABatch, OutFolderError, ReadOnlyDisk


@dataclass(frozen=True)
class OutFolder:
    """Every path of a batch's output folder, named once (docs/dataset.md draws the tree).

    ```
    OUT/batch.sqlite        the record (the one source of truth), and batch.sqlite.lock
    OUT/log.jsonl           every event of every command, as JSON lines
    OUT/metadata.jsonl      the dataset: one row per downloaded image, kept current
    OUT/images/<ab>/...     the images (and their .txt captions), named by `image_path`
    OUT/gallery/            `zbatch gallery`
    OUT/export/             `zbatch export`'s default targets
    ```
    """

    root: Path

    DB_NAME = "batch.sqlite"
    LOG_NAME = "log.jsonl"
    METADATA_NAME = "metadata.jsonl"

    @property
    def db(self) -> Path:
        return self.root / self.DB_NAME

    @property
    def log(self) -> Path:
        return self.root / self.LOG_NAME

    @property
    def metadata(self) -> Path:
        return self.root / self.METADATA_NAME

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def gallery(self) -> Path:
        return self.root / "gallery"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def file(self, relative: PurePosixPath | str) -> Path:
        """A path the record holds relative to OUT (an image's, a caption's) as a real path."""
        return self.root / relative

    def existing_db(self) -> Path:
        """The batch database; NotABatch when OUT holds none (only `run` ever makes one)."""
        if not self.root.is_dir():
            raise NotABatch(
                f"{self.root} does not exist or is not a folder: give a batch's `out` folder"
            )
        if not self.db.is_file():
            raise NotABatch(f"{self.root} holds no {self.DB_NAME}: it is not a zbatch batch folder")
        return self.db


def out_folder_problem(out: Path, *, allow_shared: bool = False) -> str | None:
    """What `check_out_folder` would refuse `out` for, or None (for `zbatch plan`'s warning)."""
    try:
        check_out_folder(out, allow_shared=allow_shared)
    except (OutFolderError, ReadOnlyDisk) as exc:
        return str(exc)
    return None


def check_out_folder(out: Path, *, allow_shared: bool = False) -> None:
    """Raise ``OutFolderError`` if ``out`` cannot be made or used as the batch's folder: a
    broken symbolic link, no storage, writable by others, or not by us."""
    try:
        info = out.stat()
    except FileNotFoundError:
        _refuse_dangling(out)
        _check_parent(out)
        return
    except OSError as exc:
        message = f"{out} cannot be used as the output folder ({exc.strerror})"
        raise OutFolderError(message) from None
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        raise OutFolderError(f"{out} is not a folder (allowed: a folder, or a path to create)")
    if mode & stat.S_IWOTH and not allow_shared:
        raise OutFolderError(
            f"{out} is writable by every user (mode {mode:04o}): another account could replace"
            f" its images or its batch record. Fix: chmod o-w {out}, or pass --allow-shared-out"
            " if the folder is shared on purpose"
        )
    _refuse_no_storage(out, out)
    _refuse_read_only(out, out)
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutFolderError(
            f"{out} is not writable by you (mode {mode:04o}): fix its permissions"
            " or choose another out folder in the manifest"
        )


def _check_parent(out: Path) -> None:
    """`out` is to be made: its nearest existing parent must take a new folder."""
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return  # a file on the way: the first mkdir names it
    _refuse_no_storage(out, parent)
    _refuse_read_only(out, parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutFolderError(
            f"{out} cannot be created: {parent} is not writable by you; fix its permissions"
            " or choose another out folder in the manifest"
        )


def _refuse_dangling(out: Path) -> None:
    """`out`, or a folder on its way, is a symbolic link whose target does not exist."""
    path = out.absolute()
    for link in (path, *path.parents):
        if link.is_symlink() and not link.exists():
            where = "is" if link == path else f"would be made under {link}, which is"
            raise OutFolderError(
                f"{out} {where} a symbolic link to {os.readlink(link)}, which does not exist"
                " (a drive that is not mounted?): mount it, or choose another out folder in"
                " the manifest (nothing was written or spent)"
            )


def _refuse_no_storage(out: Path, folder: Path) -> None:
    """`folder` is on a filesystem with no storage (/proc, /sys): no file can be made there."""
    try:
        blocks = os.statvfs(folder).f_blocks
    except OSError:
        return
    if blocks == 0:
        where = "is" if folder == out else f"would be made in {folder}, which is"
        raise OutFolderError(
            f"{out} {where} on a filesystem with no storage (such as /proc or /sys): choose"
            " another out folder in the manifest (nothing was written or spent)"
        )


def _refuse_read_only(out: Path, folder: Path) -> None:
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return
    if read_only:
        where = "is" if folder == out else f"would be made in {folder}, which is"
        raise ReadOnlyDisk(
            f"{out} {where} on a read-only filesystem: remount it read-write or choose"
            " another out folder in the manifest (nothing was written or spent)"
        )


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
