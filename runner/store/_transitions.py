"""The run's transitions: an attempt from planned to its outcome, an image to disk or lost.

Each is a synchronous function of one open transaction (`Tx`), run whole by `Store._tx` on
the store's writer thread, in a savepoint of the group transaction it commits with
(`_writer.py`; datasette's manner: `task.fn(conn)`): a guard on the current state
(`move`: `WHERE state IN (...)`, then a row-count check that raises StoreError naming both
states), the budget ledger's change, and an `events` row. docs/states.md draws the edges
and names, for each, the function here and who calls it; `_ops.py` holds the transitions of
`zbatch retry`, `cancel`, `verify --repair` and `run --adopt`, built from the same helpers.

Budget: `batch.committed_buzz` = reservations of `submitting` attempts + charges of every
attempt past it. A reservation is taken only while `committed + estimate <= cap`, in the
same transaction that records the intent, so the cap holds with any concurrency and
across crashes. Values are always bound parameters; the SQL stays portable to PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.errors import StoreError
from runner.identity import external_id
from runner.store._fence import Fence, Fenced
from runner.store._rows import (
    RETRYABLE_OUTCOMES,
    AttemptState,
    ImageOutcome,
    ImageState,
)
from runner.store._sql import cursor, fetchall


@dataclass(frozen=True, slots=True)
class Tx:
    """One open transaction (the writer's group, this transition's savepoint): its
    connection, and when the transition was asked for (ISO 8601, UTC), the time of every row
    it writes."""

    db: sqlite3.Connection
    now: str
    fence: Fence | None = None  # a worker's: every attempt's transition is fenced by it


# -- the helpers every transition is built from ----------------------------------------


def event(
    tx: Tx,
    attempt_id: int | None,
    from_state: str | None,
    to_state: str,
    buzz: int | None = None,
    detail: str | None = None,
) -> None:
    """Append the `events` row of a transition."""
    tx.db.execute(
        "INSERT INTO events (at, attempt_id, from_state, to_state, buzz, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (tx.now, attempt_id, from_state, to_state, buzz, detail),
    )


def move(
    tx: Tx,
    attempt_id: int,
    expected: Sequence[AttemptState],
    to: AttemptState,
    sets: str = "",
    params: Sequence[Any] = (),
) -> None:
    """Guarded transition: raise StoreError unless the attempt is in one of `expected`."""
    marks = ",".join("?" for _ in expected)
    owned, owner = fenced_guard(tx, attempt_id)
    cur = tx.db.execute(
        f"UPDATE attempts SET state = ?, updated_at = ?{sets}"
        f" WHERE id = ? AND state IN ({marks}){owned}",
        (to.value, tx.now, *params, attempt_id, *(s.value for s in expected), *owner),
    )
    if cur.rowcount != 1:
        check_fence(tx, attempt_id)
        with cursor(tx.db, "SELECT state FROM attempts WHERE id = ?", (attempt_id,)) as c:
            row = c.fetchone()
        now = row[0] if row else "missing"
        allowed = "/".join(s.value for s in expected)
        raise StoreError(f"attempt {attempt_id}: cannot move {now} -> {to} (needs {allowed})")


def fenced_guard(tx: Tx, attempt_id: int) -> tuple[str, tuple[int, ...]]:
    """The guard a worker's transition of `attempt_id` adds (owner and epoch), and its
    parameters; nothing when the store is no worker's."""
    if tx.fence is None:
        return "", ()
    return " AND owner = ? AND owner_epoch = ?", (tx.fence.worker, tx.fence.epoch(attempt_id))


def check_fence(tx: Tx, attempt_id: int) -> None:
    """Raise `Fenced` (and forget the attempt) unless this worker still owns `attempt_id`
    at its epoch; the row is locked until the transaction ends (an UPDATE that changes
    nothing), so a sweep cannot take it between this check and the transition."""
    if tx.fence is None:
        return
    cur = tx.db.execute(
        "UPDATE attempts SET owner = owner WHERE id = ? AND owner = ? AND owner_epoch = ?",
        (attempt_id, tx.fence.worker, tx.fence.epoch(attempt_id)),
    )
    if cur.rowcount != 1:
        tx.fence.forget(attempt_id)
        raise Fenced(
            f"attempt {attempt_id} is no longer this worker's (another worker took it over)",
            attempt_id=attempt_id,
        )


def reserved(db: sqlite3.Connection, attempt_id: int) -> int:
    """The Buzz the attempt holds reserved; StoreError when there is no such attempt."""
    rows = fetchall(db, "SELECT reserved_buzz FROM attempts WHERE id = ?", (attempt_id,))
    if not rows:
        raise StoreError(f"attempt {attempt_id} does not exist")
    return int(list(rows)[0][0])


def commit_delta(db: sqlite3.Connection, delta_buzz: int) -> None:
    """Move the ledger's committed Buzz by `delta_buzz`."""
    if delta_buzz:
        db.execute(
            "UPDATE batch SET committed_buzz = committed_buzz + ? WHERE id = 1", (delta_buzz,)
        )


def insert_attempt(tx: Tx, cell_key: str, number: int, detail: str | None = None) -> int:
    """-> planned: attempt `number` of the cell, with its externalId; its id."""
    external_id(cell_key, number)  # raises for a key or number no externalId can spell
    cur = tx.db.execute(
        "INSERT INTO attempts (cell_key, attempt, state, updated_at) VALUES (?, ?, ?, ?)",
        (cell_key, number, "planned", tx.now),
    )
    attempt_id = int(cur.lastrowid or 0)
    event(tx, attempt_id, None, AttemptState.PLANNED, None, detail)
    return attempt_id


# -- submitter ----------------------------------------------------------------------------


def reserve(tx: Tx, attempt_id: int, estimate_buzz: int) -> bool:
    """planned -> submitting: record the intent to submit and reserve `estimate_buzz`, if
    the cap allows it. False (nothing changed) when `committed + estimate` would exceed it."""
    cur = tx.db.execute(
        "UPDATE batch SET committed_buzz = committed_buzz + ?"
        " WHERE id = 1 AND committed_buzz + ? <= cap_buzz",
        (estimate_buzz, estimate_buzz),
    )
    if cur.rowcount != 1:
        return False
    move(
        tx, attempt_id, [AttemptState.PLANNED], AttemptState.SUBMITTING,
        ", reserved_buzz = ?", (estimate_buzz,),
    )  # fmt: skip
    event(tx, attempt_id, "planned", "submitting", estimate_buzz)
    return True


def reserve_many(tx: Tx, items: Sequence[tuple[int, int]]) -> list[int]:
    """`reserve` each (attempt id, estimate) in order, in this one transaction, until the
    cap refuses one; the ids reserved."""
    reserved: list[int] = []
    for attempt_id, estimate_buzz in items:
        if not reserve(tx, attempt_id, estimate_buzz):
            break
        reserved.append(attempt_id)
    return reserved


def mark_running(tx: Tx, attempt_id: int, workflow_id: str, charged_buzz: int) -> None:
    """submitting -> running: the API answered with a workflow; the reservation becomes
    what was charged."""
    before = reserved(tx.db, attempt_id)
    move(
        tx, attempt_id, [AttemptState.SUBMITTING], AttemptState.RUNNING,
        ", workflow_id = ?, reserved_buzz = 0, charged_buzz = ?", (workflow_id, charged_buzz),
    )  # fmt: skip
    commit_delta(tx.db, charged_buzz - before)
    event(tx, attempt_id, "submitting", "running", charged_buzz, workflow_id)


def drop_intent(tx: Tx, attempt_id: int, to: AttemptState, reason: str | None) -> None:
    """submitting -> `to` with the reservation released: the service charged nothing
    (`rejected` on a 400, `planned` for a request never sent, `canceled` by `withdraw`)."""
    before = reserved(tx.db, attempt_id)
    move(
        tx, attempt_id, [AttemptState.SUBMITTING], to,
        ", reserved_buzz = 0, reason = ?", (reason,),
    )  # fmt: skip
    commit_delta(tx.db, -before)
    event(tx, attempt_id, "submitting", to, -before, reason)


# -- poller ------------------------------------------------------------------------------


def mark_finished(
    tx: Tx,
    attempt_id: int,
    outcome: AttemptState,
    charged_buzz: int,
    images: Sequence[ImageOutcome],
    reason: str | None,
    running: tuple[str, int] | None = None,
) -> int | None:
    """submitting | running -> `outcome`: a terminal workflow, what it finally cost, its
    images (pending to download, or lost), and the next attempt when it is retried (its id).

    `running` (workflow id, charge): the submit's own answer was already terminal, so the
    attempt is recorded `running` first (`mark_running`, its event and ledger change) and
    finished in the same transition: one trip and one commit for both, the same rows."""
    if not outcome.is_final or outcome is AttemptState.REJECTED:
        raise StoreError(f"attempt {attempt_id}: {outcome} is not a workflow outcome")
    if running is not None:
        mark_running(tx, attempt_id, *running)
    rows = list(
        fetchall(
            tx.db,
            "SELECT a.state, a.charged_buzz, a.reserved_buzz, a.attempt, a.cell_key,"
            " c.max_attempts FROM attempts a JOIN cells c ON c.key = a.cell_key WHERE a.id = ?",
            (attempt_id,),
        )
    )
    if not rows:
        raise StoreError(f"attempt {attempt_id} does not exist")
    row = rows[0]
    before = int(row["charged_buzz"]) + int(row["reserved_buzz"])
    move(
        tx, attempt_id, [AttemptState.SUBMITTING, AttemptState.RUNNING], outcome,
        ", reserved_buzz = 0, charged_buzz = ?, reason = ?", (charged_buzz, reason),
    )  # fmt: skip
    commit_delta(tx.db, charged_buzz - before)
    event(tx, attempt_id, row["state"], outcome, charged_buzz, reason)
    if outcome is AttemptState.SUCCEEDED:
        for image in images:
            _insert_image(tx, attempt_id, image)
    if outcome in RETRYABLE_OUTCOMES and row["attempt"] < row["max_attempts"]:
        return insert_attempt(tx, row["cell_key"], row["attempt"] + 1)
    return None


def _insert_image(tx: Tx, attempt_id: int, image: ImageOutcome) -> None:
    state = ImageState.PENDING if image.deliverable else ImageState.LOST
    tx.db.execute(
        "INSERT INTO images (attempt_id, idx, blob_id, state, reason, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (attempt_id, image.index, image.blob_id, state.value, image.reason, tx.now),
    )


# -- downloader ----------------------------------------------------------------------------


def mark_downloaded(
    tx: Tx,
    attempt_id: int,
    index: int,
    *,
    path: str,
    sha256: str,
    size_bytes: int,
    width: int,
    height: int,
) -> None:
    """image pending -> downloaded: on disk (written atomically) and verified."""
    _image_move(
        tx, attempt_id, index, ImageState.DOWNLOADED,
        ", path = ?, sha256 = ?, size_bytes = ?, width = ?, height = ?",
        (path, sha256, size_bytes, width, height),
    )  # fmt: skip


def mark_lost(tx: Tx, attempt_id: int, index: int, reason: str) -> None:
    """image pending -> lost: the service no longer has it (or never delivered it)."""
    _image_move(tx, attempt_id, index, ImageState.LOST, ", reason = ?", (reason,))


def _image_move(
    tx: Tx, attempt_id: int, index: int, to: ImageState, sets: str, params: Sequence[Any]
) -> None:
    check_fence(tx, attempt_id)
    cur = tx.db.execute(
        f"UPDATE images SET state = ?, updated_at = ?{sets}"
        " WHERE attempt_id = ? AND idx = ? AND state = 'pending'",
        (to.value, tx.now, *params, attempt_id, index),
    )
    if cur.rowcount != 1:
        raise StoreError(f"image {attempt_id}/{index}: not pending, cannot become {to}")
    event(tx, attempt_id, "pending", f"image:{to}", None, str(index))
