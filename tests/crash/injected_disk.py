"""`python -m tests.crash.injected_disk VOL ARGS…`: `zbatch ARGS…` on a disk that fails on cue.

For the torture matrix on a machine that cannot mount a tmpfs (tests/diskfull.py): while the
file `VOL/.disk-full` exists, every image write under VOL fails with ENOSPC and every
database commit under VOL with SQLite's "database or disk is full", at the same boundaries
`SmallDisk.inject` patches in-process. The harness creates and removes that file
(`FlagDisk.fill()` / `free()`), so the fault reaches a `zbatch run` subprocess.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.diskfull import SmallDisk

FLAG = ".disk-full"


class FlagDisk(SmallDisk):
    """An injected-mode `SmallDisk` whose "full" is a file, seen by every process."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        super().__init__(path, size_bytes, real=False)

    @property
    def full(self) -> bool:
        return (self.path / FLAG).exists()

    @full.setter
    def full(self, value: bool) -> None:
        if value:
            (self.path / FLAG).touch()
        else:
            (self.path / FLAG).unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    from runner.cli._main import main as zbatch

    disk = FlagDisk(Path(argv[0]), 0)
    disk.inject(pytest.MonkeyPatch())
    return zbatch(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
