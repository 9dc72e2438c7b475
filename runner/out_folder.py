"""The output folder of `zbatch run`, checked before anything is written into it.

A run refuses an existing ``out`` folder that every account on the machine may write to
(``o+w``: a folder chmod'ed 777, or ``/tmp`` itself). Anyone could then replace an image
after its sha256 was recorded, plant a ``batch.sqlite`` or a lock file, or delete the
record of what was paid for. ``--allow-shared-out`` accepts such a folder on purpose. A
group-writable folder is allowed: team folders are group-writable by design, and the group
is a choice its owner made. A folder that does not exist yet is fine: the run creates it
with the user's umask. A folder the user cannot write to is refused here too, by name,
rather than as a traceback from the first write.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runner.errors import OutFolderError


def check_out_folder(out: Path, *, allow_shared: bool = False) -> None:
    """Raise ``OutFolderError`` if ``out`` exists and is writable by others, or not by us."""
    try:
        info = out.stat()
    except FileNotFoundError:
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
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutFolderError(
            f"{out} is not writable by you (mode {mode:04o}): fix its permissions"
            " or choose another out folder in the manifest"
        )
