"""The operations' transitions: `zbatch retry`, `cancel`, `verify --repair` and `run --adopt`.

Functions of one open transaction (`Tx`), like the run's in `_transitions.py` and built from
its helpers: each runs whole in a group transaction of the writer (`Store._tx`) with a guard
on the current state and an `events` row. docs/states.md ("Transitions of the operations")
names each edge and who calls it; docs/operations.md tells the commands.

`batch.generation` decides which cells may be submitted (`next_planned` hands out only
planned attempts of cells in the current generation). `zbatch run` puts the manifest's
cells there; `retry_cells` moves only the chosen cells into a new generation; `cancel_batch`
opens an empty one, so nothing is submitted until a retry lifts it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from runner.errors import StoreError
from runner.identity import external_id
from runner.store._rows import Adoption, AttemptState, RetryChoice, RetryPlan
from runner.store._sql import cursor
from runner.store._transitions import Tx, commit_delta, event, insert_attempt, move, reserved

# The kinds of cell a retry may pick; blocked and rejected only when named with --cell.
RETRY_STATES = ("failed", "expired", "lost", "canceled")
NAMED_ONLY_STATES = ("blocked", "rejected")
_OPEN = ("planned", "submitting", "running")

# The latest attempt of each cell, classified: its state, or `lost` for a succeeded attempt
# with a lost image, or `intact` for a succeeded one with every image delivered.
_LATEST = (
    "SELECT c.key, a.attempt, CASE WHEN a.state <> 'succeeded' THEN a.state"
    " WHEN EXISTS (SELECT 1 FROM images i WHERE i.attempt_id = a.id AND i.state = 'lost')"
    " THEN 'lost' ELSE 'intact' END AS kind"
    " FROM cells c JOIN attempts a ON a.cell_key = c.key"
    " WHERE a.attempt = (SELECT MAX(b.attempt) FROM attempts b WHERE b.cell_key = c.key)"
)

# -- cancel -------------------------------------------------------------------------------


def cancel_batch(tx: Tx, reason: str) -> int:
    """every planned -> canceled, and the batch stops submitting; how many it canceled.

    `batch.canceled_at` is set (kept if already set), the generation moves to an empty one
    (so a retry planned later by a finishing workflow is not handed out either), and every
    `planned` attempt becomes `canceled` with no charge. Idempotent.
    """
    cur = tx.db.execute(
        "UPDATE batch SET canceled_at = COALESCE(canceled_at, ?),"
        " generation = generation + 1 WHERE id = 1",
        (tx.now,),
    )
    if cur.rowcount != 1:
        raise StoreError("the database holds no batch yet: nothing to cancel")
    tx.db.execute(
        "INSERT INTO events (at, attempt_id, from_state, to_state, buzz, detail)"
        " SELECT ?, id, 'planned', 'canceled', 0, ? FROM attempts WHERE state = 'planned'",
        (tx.now, reason),
    )
    cur = tx.db.execute(
        "UPDATE attempts SET state = 'canceled', reason = ?, updated_at = ?"
        " WHERE state = 'planned'",
        (reason, tx.now),
    )
    event(tx, None, None, "batch:canceled", None, reason)
    return int(cur.rowcount)


# -- retry --------------------------------------------------------------------------------


def retry_cells(
    tx: Tx, states: Collection[str], cells: Sequence[str], attempts: int, cap_buzz: int | None
) -> RetryPlan:
    """-> planned (attempt n+1) for the chosen cells, and only they become submittable.

    Chosen: with `cells`, those cells (and, when `states` is not empty, only those in one of
    them), blocked and rejected included; without, every cell whose latest attempt is in
    `states` (`lost`: succeeded with a lost image). Never a cell still open or succeeded
    with every image delivered. With the new attempts: the cells' move into a new
    generation, their `max_attempts` (n + `attempts`), the cancel flag lifted, and
    `cap_buzz` if given. Nothing changes when nothing is chosen.
    """
    unknown = set(states) - set(RETRY_STATES) - (set(NAMED_ONLY_STATES) if cells else set())
    if unknown:
        allowed = ", ".join(RETRY_STATES)
        raise StoreError(f"cannot retry state(s) {', '.join(sorted(unknown))} ({allowed})")
    rows, skipped = retry_candidates(tx.db, states, cells)
    if not rows:
        return RetryPlan(chosen=[], skipped=skipped)
    with cursor(tx.db, "SELECT generation, canceled_at FROM batch WHERE id = 1") as cur:
        batch = cur.fetchone()
    assert batch is not None  # rows exist, so the batch does
    generation = int(batch[0]) + 1
    chosen: list[RetryChoice] = []
    for key, last, kind in rows:
        number = last + 1
        insert_attempt(tx, key, number, f"retry of {kind}")
        tx.db.execute(
            "UPDATE cells SET generation = ?, max_attempts = ? WHERE key = ?",
            (generation, number - 1 + attempts, key),
        )
        chosen.append(RetryChoice(key, number, kind))
    tx.db.execute(
        "UPDATE batch SET generation = ?, canceled_at = NULL,"
        " cap_buzz = COALESCE(?, cap_buzz) WHERE id = 1",
        (generation, cap_buzz),
    )
    event(tx, None, None, "batch:retry", cap_buzz, f"{len(chosen)} cells")
    return RetryPlan(chosen=chosen, skipped=skipped, canceled_lifted=batch[1] is not None)


def retry_candidates(
    db: sqlite3.Connection, states: Collection[str], cells: Sequence[str]
) -> tuple[list[tuple[str, int, str]], dict[str, str]]:
    """(key, latest attempt, kind) of the cells to retry, and why each named one is not.
    By state, never a cell a `run --replace` left out of the manifest (naming it retries it).
    A read: `retry_cells` acts on it; `zbatch retry` without a token asks it first."""
    if not cells:
        marks = ",".join("?" for _ in states) or "NULL"
        with cursor(
            db,
            f"SELECT * FROM ({_LATEST} AND c.standing <> 'replaced') AS latest"
            f" WHERE kind IN ({marks}) ORDER BY key",
            tuple(states),
        ) as cur:
            return [(r[0], int(r[1]), r[2]) for r in cur.fetchall()], {}
    rows: list[tuple[str, int, str]] = []
    skipped: dict[str, str] = {}
    for key in dict.fromkeys(cells):
        with cursor(db, f"{_LATEST} AND c.key = ?", (key,)) as cur:
            row = cur.fetchone()
        if row is None:
            skipped[key] = "no such cell in this batch"
        elif row[2] == "intact":
            skipped[key] = "succeeded with every image delivered: never retried"
        elif row[2] in _OPEN:
            skipped[key] = f"still {row[2]}: let `zbatch run` finish it first"
        elif states and row[2] not in states:
            skipped[key] = f"{row[2]}, not one of --state {','.join(states)}"
        else:
            rows.append((row[0], int(row[1]), row[2]))
    return rows, skipped


# -- adopt --------------------------------------------------------------------------------


def adopt_workflow(
    tx: Tx, cell_key: str, attempt: int, workflow_id: str, charged_buzz: int
) -> Adoption:
    """(none) | planned | submitting -> running: a workflow found on the service recorded as
    attempt `attempt` of `cell_key`.

    A missing attempt row is inserted; a `planned` one (what `plan` made) or a `submitting`
    one (an intent whose answer was lost) moves to `running`. The charge enters the ledger
    (`committed += charged - reserved`): adoption never checks the cap, the Buzz is already
    spent. Planned attempts of the cell numbered below it never reached the service and are
    canceled. Nothing changes for a known or conflicting one.
    """
    with cursor(tx.db, "SELECT 1 FROM cells WHERE key = ?", (cell_key,)) as cur:
        if cur.fetchone() is None:
            return Adoption("unknown", detail="no such cell in this batch")
    with cursor(
        tx.db,
        "SELECT id, state, workflow_id FROM attempts WHERE cell_key = ? AND attempt = ?",
        (cell_key, attempt),
    ) as cur:
        row = cur.fetchone()
    detail = f"adopted {workflow_id}"
    if row is None:
        external_id(cell_key, attempt)  # raises for a key or number no externalId can spell
        cur = tx.db.execute(
            "INSERT INTO attempts (cell_key, attempt, state, charged_buzz, workflow_id,"
            " updated_at) VALUES (?, ?, 'running', ?, ?, ?)",
            (cell_key, attempt, charged_buzz, workflow_id, tx.now),
        )
        attempt_id = int(cur.lastrowid or 0)
        commit_delta(tx.db, charged_buzz)
        event(tx, attempt_id, None, "running", charged_buzz, detail)
    elif row["state"] in ("planned", "submitting"):
        attempt_id = int(row["id"])
        before = reserved(tx.db, attempt_id)
        move(
            tx, attempt_id, [AttemptState(row["state"])], AttemptState.RUNNING,
            ", workflow_id = ?, reserved_buzz = 0, charged_buzz = ?", (workflow_id, charged_buzz),
        )  # fmt: skip
        commit_delta(tx.db, charged_buzz - before)
        event(tx, attempt_id, row["state"], "running", charged_buzz, detail)
    elif row["workflow_id"] == workflow_id:
        return Adoption("known", int(row["id"]))
    else:
        found = row["workflow_id"] or "no workflow"
        return Adoption("conflict", int(row["id"]), f"recorded {row['state']}, {found}")
    _supersede(tx, cell_key, attempt)
    return Adoption("adopted", attempt_id)


def _supersede(tx: Tx, cell_key: str, attempt: int) -> None:
    """planned -> canceled for the cell's attempts numbered below `attempt`."""
    reason = f"superseded by attempt {attempt}, adopted from the service"
    where = " FROM attempts WHERE cell_key = ? AND attempt < ? AND state = 'planned'"
    tx.db.execute(
        "INSERT INTO events (at, attempt_id, from_state, to_state, buzz, detail)"
        " SELECT ?, id, 'planned', 'canceled', 0, ?" + where,
        (tx.now, reason, cell_key, attempt),
    )
    tx.db.execute(
        "UPDATE attempts SET state = 'canceled', reason = ?, updated_at = ?"
        " WHERE cell_key = ? AND attempt < ? AND state = 'planned'",
        (reason, tx.now, cell_key, attempt),
    )


# -- verify --repair ------------------------------------------------------------------------


def mark_image_repaired(tx: Tx, attempt_id: int, index: int, sha256: str) -> None:
    """image downloaded -> downloaded: the file was damaged and is whole again (same sha256)."""
    _verified(tx, attempt_id, index, "image:repaired", "", (), " AND sha256 = ?", (sha256,))


def mark_image_refetched(tx: Tx, attempt_id: int, index: int, sha256: str, size_bytes: int) -> None:
    """image downloaded -> downloaded, with new bytes: its recorded sha256 was of bytes that
    do not decode (recorded before the strict check), and the service's fresh ones do."""
    _verified(
        tx, attempt_id, index, "image:refetched", ", sha256 = ?, size_bytes = ?",
        (sha256, size_bytes), "", (),
    )  # fmt: skip


def mark_image_missing(tx: Tx, attempt_id: int, index: int, reason: str) -> None:
    """image downloaded -> lost: the file is gone or damaged and the service no longer has it."""
    _verified(
        tx, attempt_id, index, "image:lost", ", state = 'lost', reason = ?", (reason,), "", ()
    )


def _verified(
    tx: Tx,
    attempt_id: int,
    index: int,
    to: str,
    sets: str,
    params: Sequence[Any],
    guard: str,
    guard_params: Sequence[Any],
) -> None:
    cur = tx.db.execute(
        f"UPDATE images SET updated_at = ?{sets}"
        f" WHERE attempt_id = ? AND idx = ? AND state = 'downloaded'{guard}",
        (tx.now, *params, attempt_id, index, *guard_params),
    )
    if cur.rowcount != 1:
        raise StoreError(f"image {attempt_id}/{index}: not downloaded, cannot become {to}")
    event(tx, attempt_id, "downloaded", to, None, str(index))
