"""A batch counted by cell, which the run summary, `zbatch status`, `report` and `list` agree
on; and the check `zbatch run` makes at its start of the image files the record lists.

By cell: each cell counts once, as its latest attempt (a retried cell as its retry, so
`verify --repair` then `retry` still makes 12 cells of 12, and a canceled cell that a retry
made succeed is no longer a failure); each image of a cell (cell key, index) counts once, as
the row of the latest attempt that has one (an image a retry fetched again replaces the
lost one it stands for).

These are functions of a `Store` rather than its methods because `_store.py` is full (the
500-line limit); they run their SQL through the store's `_read` and `_tx`, as its methods do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from runner.store import _reads as reads
from runner.store._rows import AttemptState, FailureReason, ImageState
from runner.store._sql import cursor
from runner.store._store import Store
from runner.store._transitions import Tx, event

Db = reads.Db
TOP_REASONS = 10
ENDED_WITHOUT_SUCCESS = reads.ENDED_WITHOUT_SUCCESS
_LATEST = reads.LATEST
# An image row that no later attempt of its cell replaces (by index).
_CURRENT_IMAGE = (
    "NOT EXISTS (SELECT 1 FROM attempts b JOIN images j ON j.attempt_id = b.id"
    " WHERE b.cell_key = a.cell_key AND b.attempt > a.attempt AND j.idx = i.idx)"
)


@dataclass(frozen=True)
class Tally:
    """A batch counted by cell at one instant."""

    cells: dict[str, int]  # by the state of each cell's latest attempt, in state order
    images: dict[str, int]  # pending / downloaded / lost: each (cell, index) once
    failures: list[FailureReason]  # cells (and images) that ended without success, by reason
    failed_cells: int  # every cell whose latest attempt ended without success
    lost_images: int  # every image of a latest attempt recorded lost

    @property
    def total(self) -> int:
        return sum(self.cells.values())

    def count(self, state: AttemptState | str) -> int:
        return self.cells.get(str(state), 0)


async def tally(store: Store, top_reasons: int = TOP_REASONS) -> Tally:
    """The batch counted by cell; the `top_reasons` most frequent failure reasons."""
    return await store._read(_tally, top_reasons)


def _tally(db: Db, top_reasons: int) -> Tally:
    order = {s.value: n for n, s in enumerate(AttemptState)}
    cells = reads.cell_counts(db)
    images = {s.value: 0 for s in ImageState}
    with cursor(
        db,
        "SELECT i.state, COUNT(*) FROM images i JOIN attempts a ON a.id = i.attempt_id"
        f" WHERE {_CURRENT_IMAGE} GROUP BY i.state",
    ) as cur:
        for state, n in cur.fetchall():
            images[state] = int(n)
    failed = sum(n for state, n in cells.items() if state in ENDED_WITHOUT_SUCCESS)
    return Tally(
        cells={
            s: cells[s] for s in sorted(cells, key=lambda s: order.get(s, len(order))) if cells[s]
        },
        images=images,
        failures=reads.failure_reasons(db, top_reasons),
        failed_cells=failed,
        lost_images=_lost_images(db),
    )


def _lost_images(db: Db) -> int:
    return reads.scalar(
        db,
        "SELECT COUNT(*) FROM images i JOIN attempts a ON a.id = i.attempt_id"
        f" WHERE i.state = 'lost' AND {_LATEST}",
    )


# -- the image files the record lists (`zbatch run`, at its start) --------------------------


async def recorded_files(
    store: Store, after: tuple[int, int], limit: int
) -> list[tuple[int, int, str]]:
    """Up to `limit` downloaded images (attempt id, index, path under OUT) after `after`, in
    that order; only the current row of each (cell, index), as `Store.downloaded_images`."""
    return await store._read(_recorded_files, after, limit)


def _recorded_files(db: Db, after: tuple[int, int], limit: int) -> list[tuple[int, int, str]]:
    with cursor(
        db,
        "SELECT i.attempt_id, i.idx, i.path FROM images i JOIN attempts a ON a.id = i.attempt_id"
        " WHERE i.state = 'downloaded' AND (i.attempt_id > ? OR (i.attempt_id = ? AND i.idx > ?))"
        f" AND {_CURRENT_IMAGE} ORDER BY i.attempt_id, i.idx LIMIT ?",
        (after[0], after[0], after[1], limit),
    ) as cur:
        return [(int(r[0]), int(r[1]), str(r[2])) for r in cur.fetchall()]


async def fetch_again(store: Store, images: Sequence[tuple[int, int]]) -> int:
    """image downloaded -> pending for each (attempt id, index): its file is missing from
    disk, so the downloaders fetch it again (or record it lost, with why). How many moved."""
    return await store._tx(_fetch_again, images)


def _fetch_again(tx: Tx, images: Sequence[tuple[int, int]]) -> int:
    moved = 0
    for attempt_id, index in images:
        cur = tx.db.execute(
            "UPDATE images SET state = 'pending', path = NULL, sha256 = NULL,"
            " size_bytes = NULL, updated_at = ?"
            " WHERE attempt_id = ? AND idx = ? AND state = 'downloaded'",
            (tx.now, attempt_id, index),
        )
        if cur.rowcount == 1:
            moved += 1
            detail = f"{index}: the file was missing from disk; fetched again"
            event(tx, attempt_id, "downloaded", "image:pending", None, detail)
    return moved


# -- the cells that ended without success (`zbatch report` lists them) ----------------------


@dataclass(frozen=True)
class EndedCell:
    """A cell whose latest attempt ended without success: its key, state, reason and prompt."""

    key: str
    state: str
    reason: str | None
    prompt: str


async def ended_cells(store: Store, limit: int) -> list[EndedCell]:
    """Up to `limit` cells whose latest attempt ended without success, in grid order."""
    return await store._read(_ended_cells, limit)


def _ended_cells(db: Db, limit: int) -> list[EndedCell]:
    marks = ",".join("?" for _ in ENDED_WITHOUT_SUCCESS)
    with cursor(
        db,
        "SELECT a.cell_key, a.state, a.reason, c.request FROM attempts a"
        " JOIN cells c ON c.key = a.cell_key"
        f" WHERE a.state IN ({marks}) AND {_LATEST} ORDER BY c.seq, c.replica, c.key LIMIT ?",
        (*ENDED_WITHOUT_SUCCESS, limit),
    ) as cur:
        rows = cur.fetchall()
    return [
        EndedCell(key=r[0], state=r[1], reason=r[2], prompt=str(json.loads(r[3]).get("prompt", "")))
        for r in rows
    ]
