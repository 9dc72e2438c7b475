"""`zbatch status`: a batch's record read offline, as text for people or JSON for scripts.

The database is opened read-only and without the batch lock, so status works while a run
is going (it sees the last committed transition) and never changes anything. Images on
disk are counted from the folder itself, so a difference from the record shows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from runner.dataset._failures import failure_lines
from runner.dataset._metadata import HERE, RecordAt, read_batch
from runner.disk import OutFolder
from runner.store import AttemptState, Budget, FailureReason, redact, tally

TOP_REASONS = 10


@dataclass(frozen=True)
class BatchStatus:
    """What the record of one batch says, read at one instant."""

    out: Path
    name: str
    tag: str
    created_at: str
    cells: dict[str, int]  # by the state of each cell's latest attempt
    attempts: dict[str, int]  # every attempt by state
    images: dict[str, int]  # pending / downloaded / lost: each (cell, index) once
    files_on_disk: int  # image files under OUT/images (temp files not counted)
    budget: Budget
    failures: list[FailureReason]  # cells by their latest attempt, and lost images
    last_event_at: str | None
    more_failures: int = 0  # cells and images that ended for reasons not in `failures`
    record: str = ""  # where the record is (a PostgreSQL URL without password); "": OUT's


async def read_status(
    out: Path, *, at: RecordAt = HERE, top_reasons: int = TOP_REASONS
) -> BatchStatus:
    """Read the batch's record (`at`: OUT/batch.sqlite by default) read-only, and count the
    image files under `out`; raise NotABatch when there is no batch."""
    async with read_batch(out, at) as (store, info):
        counts = await store.counts()
        by_cell = await tally(store, top_reasons)
        budget = await store.budget()
        last = await store.last_event_at()
    files = await anyio.to_thread.run_sync(functools.partial(count_image_files, out / "images"))
    return BatchStatus(
        out=out,
        name=info.name,
        tag=info.tag,
        created_at=info.created_at,
        cells=_ordered(by_cell.cells),
        attempts=_ordered({k: v for k, v in counts.items() if not k.startswith("image:")}),
        images=by_cell.images,
        files_on_disk=files,
        budget=budget,
        failures=by_cell.failures,
        last_event_at=last,
        more_failures=by_cell.failed_cells
        + by_cell.lost_images
        - sum(f.count for f in by_cell.failures),
        record=redact(at.url) if at.url else "",
    )


def count_image_files(folder: Path) -> int:
    """Image files under `folder`, not counting an interrupted write's `.name.*.tmp`."""
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


def _ordered(by_state: dict[str, int]) -> dict[str, int]:
    """States in the order of the state machine; unknown ones (none today) last."""
    order = [s.value for s in AttemptState]
    known = {s: by_state[s] for s in order if by_state.get(s)}
    return known | {s: n for s, n in sorted(by_state.items()) if s not in known and n}


def render_status(status: BatchStatus) -> str:
    """The status as a few aligned lines for a person."""
    b, img = status.budget, status.images
    lines = [
        f"batch       {status.name}  (tag {status.tag}, created {status.created_at})",
        f"record      {status.record or OutFolder(status.out).db}",
        f"cells       {_by_state(status.cells)}",
        f"attempts    {_by_state(status.attempts)}",
        f"images      {img['downloaded']} downloaded · {img['pending']} pending · "
        f"{img['lost']} lost · {status.files_on_disk} files on disk under "
        f"{status.out / 'images'}",
        f"buzz        {buzz_line(b)}",
    ]
    missing = img["downloaded"] - status.files_on_disk
    if missing > 0:
        lines.append(f"            {missing} recorded images are missing from disk")
    said = failure_lines(status.failures, status.out, more=status.more_failures)
    for n, line in enumerate(said or ["none"]):
        lines.append(("failures    " if n == 0 else "            ") + line)
    lines.append(f"last event  {status.last_event_at or 'none yet'}")
    return "\n".join(lines)


def status_json(status: BatchStatus) -> dict[str, Any]:
    """The status as a JSON-ready document (`zbatch status OUT --json`)."""
    b = status.budget
    return {
        "batch": status.name,
        "tag": status.tag,
        "created_at": status.created_at,
        "out": str(status.out),
        "record": status.record or str(OutFolder(status.out).db),
        "cells": {"total": sum(status.cells.values()), "by_state": status.cells},
        "attempts": {"total": sum(status.attempts.values()), "by_state": status.attempts},
        "images": {**status.images, "on_disk": status.files_on_disk},
        "buzz": {
            "cap": b.cap_buzz,
            "charged": b.charged_buzz,
            "reserved": b.reserved_buzz,
            "committed": b.committed_buzz,
        },
        "failures": [
            {"kind": f.kind, "reason": f.reason, "count": f.count} for f in status.failures
        ],
        "last_event_at": status.last_event_at,
    }


def _by_state(by_state: dict[str, int]) -> str:
    total = sum(by_state.values())
    if not total:
        return "0"
    return f"{total}: " + " · ".join(f"{state} {n}" for state, n in by_state.items())


def buzz_line(b: Budget) -> str:
    """`48 charged · 0 reserved · cap 60 (12 left)`: what is charged, what is reserved, the
    cap, and what is left of it; over a lowered cap, how far over (never a share above 100%)."""
    head = f"{b.charged_buzz} charged · {b.reserved_buzz} reserved · cap {b.cap_buzz}"
    left = b.cap_buzz - b.committed_buzz
    if left >= 0:
        return f"{head} ({left} left)"
    return f"{head} (over the cap by {-left}: nothing more is submitted)"
