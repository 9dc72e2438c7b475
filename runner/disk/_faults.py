"""The local machine's failures, translated once: a full or read-only disk, a locked, damaged
or newer batch database.

`disk_error` turns an `OSError` from a write under the batch's folder into a `LocalDiskError`
that names the folder and its free space; `database_error` turns a `sqlite3.Error` into the
`BatchUnusable` or `LocalDiskError` it means, by SQLite's own error name (`sqlite_errorname`,
Python 3.11+), not by parsing messages. `local_failure` does both for whatever reaches the CLI,
through exception groups too, so none of these ends in a traceback. An error these do not
recognise (a bug: an SQL mistake, EBADF) is left as it is.

```
ENOSPC, EDQUOT, SQLITE_FULL           -> DiskFull        exit 6
EROFS, SQLITE_READONLY*               -> ReadOnlyDisk    exit 6
EIO, EACCES, SQLITE_IOERR*, CANTOPEN  -> LocalDiskError  exit 6 (DiskFull when no space is left)
SQLITE_BUSY*, "database is locked"    -> DatabaseLocked  exit 7
SQLITE_CORRUPT*, SQLITE_NOTADB        -> DatabaseDamaged exit 7
```
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

from runner.errors import (
    DatabaseDamaged,
    DatabaseLocked,
    DiskFull,
    LocalDiskError,
    ReadOnlyDisk,
    ZbatchError,
)

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_ERRNOS = frozenset({errno.EIO, errno.EACCES, errno.EPERM, errno.EROFS, *FULL_ERRNOS})
NEARLY_FULL_BYTES = 256 * 1024  # an SQLite I/O error with less free than this: the disk is full
BUSY_TIMEOUT_MS = 5000  # how long SQLite waits for another program's lock (PRAGMA busy_timeout)


def human_bytes(n: int) -> str:
    """`1.5 MiB`, `12 KiB`, `0 B`."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def free_space(folder: Path) -> tuple[int, int] | None:
    """(free, total) bytes of the filesystem holding `folder` (or its nearest existing
    parent); None when even that cannot be asked."""
    here = folder
    while True:
        try:
            usage = shutil.disk_usage(here)
        except OSError:
            if here.parent == here:
                return None
            here = here.parent
            continue
        return usage.free, usage.total


def _space(folder: Path) -> str:
    got = free_space(folder)
    return (
        "free space unknown"
        if got is None
        else f"{human_bytes(got[0])} free of {human_bytes(got[1])}"
    )


def disk_error(exc: OSError, folder: Path, doing: str) -> LocalDiskError | None:
    """The `LocalDiskError` an `OSError` raised while `doing` something under `folder` means,
    or None when it is not the disk's doing."""
    if exc.errno in FULL_ERRNOS:
        return DiskFull(
            f"the disk holding {folder} is full ({_space(folder)}) while {doing}: free some"
            " space, then run the same command again (the record is intact; it continues"
            " from where it stopped)"
        )
    if exc.errno == errno.EROFS:
        return ReadOnlyDisk(
            f"{folder} is on a read-only filesystem while {doing}: remount it read-write (or"
            " choose another `out`), then run the same command again (the record is intact)"
        )
    if exc.errno in DISK_ERRNOS:
        reason = exc.strerror or os.strerror(exc.errno or 0)
        return LocalDiskError(
            f"{folder}: {reason} while {doing}: fix the disk or the folder, then run the same"
            " command again (the record is intact)"
        )
    return None


def database_error(exc: sqlite3.Error, db: Path | None) -> ZbatchError | None:
    """The zbatch error an `sqlite3.Error` on the batch database `db` means, or None when it
    is not the machine's doing (a bug)."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc)
    where = str(db) if db is not None else "the batch database (batch.sqlite)"
    folder = db.parent if db is not None else Path(".")
    if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and _nearly_full(folder)):
        return DiskFull(
            f"the disk holding {where} is full ({_space(folder)}; SQLite: {text}): free some"
            " space, then run the same command again (what was not committed was rolled"
            " back; the record is intact)"
        )
    if name.startswith("SQLITE_READONLY"):
        return ReadOnlyDisk(
            f"{where} cannot be written ({text}): its folder is on a read-only filesystem or"
            " the file is read-only; fix that, then run the same command again"
        )
    if name.startswith("SQLITE_BUSY") or "database is locked" in text:
        return DatabaseLocked(
            f"{where} is locked by another program (waited {BUSY_TIMEOUT_MS / 1000:g} s):"
            " close whatever holds it open (a sqlite3 shell, a database browser, a backup"
            " tool), then run the same command again; nothing was changed"
        )
    if name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB":
        return damaged(where, text)
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")):
        return LocalDiskError(
            f"{where}: the disk failed ({text}, {name}): check the disk, then run the same"
            " command again"
        )
    return None


def damaged(where: str, detail: str) -> DatabaseDamaged:
    """The refusal of a damaged batch database, with the way out."""
    return DatabaseDamaged(
        f"{where} is damaged ({detail}): zbatch will not guess at a broken record."
        " `zbatch run MANIFEST --adopt` moves it aside (to batch.sqlite.damaged-<time>, kept,"
        " never deleted) and rebuilds the record from the service: every workflow of the"
        " batch is found by its tag and externalId, nothing is paid twice, and images"
        " already on disk are fetched and checked again",
        detail=detail,
    )


def _nearly_full(folder: Path) -> bool:
    got = free_space(folder)
    return got is not None and got[0] < NEARLY_FULL_BYTES


def local_failure(exc: BaseException, *, db: Path | None = None) -> ZbatchError | None:
    """What the CLI should report for `exc`: itself when a ZbatchError, the translation of a
    disk or database error (`db`: the batch database, when known), the first such inside an
    exception group whose every error is one; else None (unexpected: let it be a traceback)."""
    if isinstance(exc, ZbatchError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return database_error(exc, db)
    if isinstance(exc, OSError):
        folder = Path(exc.filename) if isinstance(exc.filename, str) else Path(".")
        return disk_error(exc, folder.parent if exc.filename else folder, "writing")
    if isinstance(exc, BaseExceptionGroup):
        found = [local_failure(e, db=db) for e in exc.exceptions]
        if found and all(f is not None for f in found):
            return found[0]
    return None
