"""`zbatch list`: the batches under a folder, a line each, read without their lock.

A batch is a folder holding `batch.sqlite`, found at most `MAX_DEPTH` folders down (hidden
folders and symlinks are not followed). Each is opened read-only, as `zbatch status` opens
it, and counted by cell (`store.tally`). Whether a run holds it is read from the kernel's
table of locks (`/proc/locks`, Linux) or, where there is none, from the pid the lock file
names: never by taking the lock, so a run starting at that instant is never refused. A
`batch.sqlite` that cannot be read (damaged, foreign, newer) is one line saying so.

With a store (`zbatch list --store URL`, `ZBATCH_STORE`) the list is the database's batch: a
database holds one batch (docs/design/scale-out.md), so it is one line, named by the URL
without its password, `running` when a runner's session holds the batch's advisory lock.
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from runner.dataset._metadata import RecordAt, read_batch
from runner.disk import OutFolder
from runner.errors import BatchUnusable, NotABatch, ZbatchError
from runner.store import PostgresStore, redact, tally

MAX_DEPTH = 3
OPEN_STATES = ("planned", "submitting", "running")
DB_NAME = "batch.sqlite"


@dataclass(frozen=True)
class BatchLine:
    """One batch under the folder, or why its record could not be read (`problem`)."""

    path: Path  # the batch's folder
    name: str = ""
    cells: int = 0
    done: int = 0  # cells whose latest attempt succeeded
    failed: int = 0  # ... ended without success
    open: int = 0  # ... not finished (planned, submitting, running)
    lost_images: int = 0
    pending_images: int = 0
    charged_buzz: int = 0
    cap_buzz: int = 0
    state: str = ""  # running, finished, incomplete, failed cells; unreadable
    last_activity: str | None = None
    problem: str | None = None
    store: str | None = None  # a batch in PostgreSQL: its URL without password (not `path`)


def find_batches(folder: Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """The folders under `folder` (itself included) that hold a batch.sqlite, sorted."""
    return sorted(_walk(folder, max_depth))


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    if any(e.name == DB_NAME and e.is_file(follow_symlinks=False) for e in entries):
        yield folder
    if depth <= 0:
        return
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        yield from _walk(Path(entry.path), depth - 1)


async def list_batches(folder: Path) -> list[BatchLine]:
    """Every batch under `folder`, each read read-only; NotABatch when `folder` is no folder."""
    if not await anyio.to_thread.run_sync(folder.is_dir):
        raise NotABatch(f"{folder} does not exist or is not a folder")
    found = await anyio.to_thread.run_sync(find_batches, folder)
    return [await read_line(path) for path in found]


async def list_store(url: str) -> list[BatchLine]:
    """The batch of the PostgreSQL database at `url`, as `list_batches` lists a folder's: one
    line (a database holds one batch), or none when the database has no zbatch schema.
    An unreachable database is BatchUnusable, as for every command."""
    line = await read_line(Path(), RecordAt(url))
    if line.problem is not None and line.problem.endswith("(no zbatch schema)"):
        return []
    return [line]


async def read_line(out: Path, at: RecordAt | None = None) -> BatchLine:
    """One batch's line (`at`: its record in PostgreSQL, else `out`'s batch.sqlite); a record
    that cannot be read is a line naming the problem."""
    at = at or RecordAt()
    shown = redact(at.url) if at.url else None
    held = None
    if at.url is None:
        held = await anyio.to_thread.run_sync(functools.partial(lock_holder, OutFolder(out).db))
    try:
        async with read_batch(out, at) as (store, info):
            by_cell = await tally(store, 0)
            budget = await store.budget()
            last = await store.last_event_at()
            if isinstance(store, PostgresStore) and (pid := await store.runner_pid()):
                held = f"PostgreSQL session {pid}"
    except (ZbatchError, sqlite3.Error, OSError) as exc:
        if at.url is not None and isinstance(exc, BatchUnusable):
            raise  # unreachable, in use, newer: the command's error says it, exit 7
        return BatchLine(path=out, state="unreadable", problem=_first_line(str(exc)), store=shown)
    open_cells = sum(by_cell.count(s) for s in OPEN_STATES)
    line = BatchLine(
        path=out,
        name=info.name,
        cells=by_cell.total,
        done=by_cell.count("succeeded"),
        failed=by_cell.failed_cells,
        open=open_cells,
        lost_images=by_cell.lost_images,
        pending_images=by_cell.images.get("pending", 0),
        charged_buzz=budget.charged_buzz,
        cap_buzz=budget.cap_buzz,
        last_activity=last,
        store=shown,
    )
    return _with_state(line, held)


def _with_state(line: BatchLine, held: str | None) -> BatchLine:
    if held is not None:
        state = "running"
    elif line.open or line.pending_images:
        state = "incomplete"
    elif line.failed or line.lost_images:
        state = "failed cells"
    else:
        state = "finished"
    return BatchLine(**{**line.__dict__, "state": state})


def lock_holder(db: Path) -> str | None:
    """Who holds the batch lock (`pid N@host`), or None when no run holds it; never locks."""
    lock = db.with_name(db.name + ".lock")
    try:
        st = os.stat(lock)
        holder = lock.read_text(encoding="utf-8", errors="replace").strip() or "a run"
    except OSError:
        return None
    try:
        table = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return holder if _pid_alive(holder) else None
    for row in table.splitlines():
        fields = row.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        device = fields[5].split(":")
        if len(device) != 3:
            continue
        try:
            major, minor, inode = int(device[0], 16), int(device[1], 16), int(device[2])
        except ValueError:
            continue
        if (major, minor, inode) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
            return holder
    return None


def _pid_alive(holder: str) -> bool:
    """`pid N@host` names a live process of this host (another host's holder: assumed so)."""
    pid_text, _, host = holder.removeprefix("pid ").partition("@")
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable"


# -- rendering ---------------------------------------------------------------------------------

HEADER = ("BATCH", "NAME", "CELLS", "DONE", "FAILED", "OPEN", "BUZZ", "STATE", "LAST ACTIVITY")


def render_batches(lines: list[BatchLine], folder: Path) -> str:
    """A table, a batch a row; an unreadable record is its path and the problem."""
    if not lines:
        return f"no batches under {folder} (a batch is a folder with {DB_NAME}, {MAX_DEPTH} deep)"
    rows: list[tuple[str, ...]] = [HEADER]
    broken: list[str] = []
    for b in lines:
        where = b.store or _relative(b.path, folder)
        if b.problem is not None:
            broken.append(f"{where}  unreadable: {b.problem}")
            continue
        rows.append(
            (where, b.name, str(b.cells), str(b.done), str(b.failed), str(b.open),
             f"{b.charged_buzz}/{b.cap_buzz}", b.state, b.last_activity or "-")
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    numeric = {2, 3, 4, 5, 6}
    text = [
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    return "\n".join(text + broken)


def batches_json(lines: list[BatchLine], folder: Path) -> list[dict[str, Any]]:
    """The list as JSON-ready rows (`zbatch list --json`)."""
    out: list[dict[str, Any]] = []
    for b in lines:
        if b.problem is not None:
            out.append({"path": b.store or str(b.path), "state": b.state, "problem": b.problem})
            continue
        out.append(
            {
                "path": b.store or str(b.path),
                "name": b.name,
                "cells": {"total": b.cells, "done": b.done, "failed": b.failed, "open": b.open},
                "images": {"lost": b.lost_images, "pending": b.pending_images},
                "buzz": {"charged": b.charged_buzz, "cap": b.cap_buzz},
                "state": b.state,
                "last_activity": b.last_activity,
            }
        )
    return out


def _relative(path: Path, folder: Path) -> str:
    try:
        shown = path.relative_to(folder)
    except ValueError:
        return str(path)
    return "." if shown == Path(".") else shown.as_posix()
