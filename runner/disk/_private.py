"""Files only their owner may read: the batch database, its lock and WAL files, and the log.

A batch's record names its prompts, workflow ids and spending, and its log names the URLs it
fetched: another account on the machine has no business reading them. ``open_private``
creates a file with mode 0600 (chmod'ed after creation, so the umask cannot matter) and
leaves the mode of an existing file alone: a user who loosened it on purpose keeps that.
SQLite gives ``-wal`` and ``-shm`` the mode of their database file, so a private
``batch.sqlite`` keeps them private too. Images stay 0644 (``runner.disk._atomic``).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_MODE = 0o600


def open_private(path: Path, flags: int) -> int:
    """A descriptor for ``path`` opened with ``flags``; a new file is created 0600."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return os.open(path, flags)
    try:
        os.fchmod(fd, PRIVATE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (then leave it as it is)."""
    os.close(open_private(path, os.O_RDONLY))
