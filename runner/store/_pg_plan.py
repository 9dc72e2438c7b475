"""Planning on PostgreSQL: `_plan.plan`'s contract, in PostgreSQL's own bulk SQL.

The same transaction and the same result as SQLite's (`_plan.py`): every row of the
manifest recorded as a cell of `generation` and `revision`, a new cell with its planned
first attempt and that attempt's `planned` event, a known cell moved to the new generation
at its latest place, a key met twice keeping its later place and the later row; nothing of
it visible until it commits, nothing left by a failure or a cancel. What differs is how:
SQLite's merge walks `rowid`s and an attached in-memory table; here the rows are copied
(`COPY`, the fast way into PostgreSQL) into a temporary table that the transaction drops,
each with its place (`seq`), and each `PLAN_CHUNK` of them is merged by one statement whose
data-modifying parts insert the new cells, their attempts (in key order, as on SQLite) and
the attempts' events together.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterable
from typing import cast

from runner.identity import PlanRow
from runner.store import _plan
from runner.store._pg import PgConnection
from runner.store._plan import LEFTOVER, PlanStopped

_STAGE = (
    'CREATE TEMPORARY TABLE plan_rows (seq BIGINT NOT NULL, key TEXT COLLATE "C" NOT NULL,'
    " replica BIGINT NOT NULL, model TEXT NOT NULL, request TEXT NOT NULL, vars TEXT NOT NULL,"
    " estimate_buzz BIGINT NOT NULL) ON COMMIT DROP"
)
_COPY = "COPY plan_rows (seq, key, replica, model, request, vars, estimate_buzz) FROM STDIN"
_MERGE_NEW = (
    "WITH new_cells AS (INSERT INTO cells (key, seq, replica, model, request, vars,"
    " estimate_buzz, max_attempts, generation, revision)"
    " SELECT DISTINCT ON (key) key, seq, replica, model, request, vars, estimate_buzz, ?, ?, ?"
    " FROM plan_rows ORDER BY key, seq DESC ON CONFLICT (key) DO NOTHING RETURNING key),"
    " new_attempts AS (INSERT INTO attempts (cell_key, attempt, state, updated_at)"
    " SELECT key, 1, 'planned', ? FROM new_cells ORDER BY key"
    " RETURNING id)"
    " INSERT INTO events (at, attempt_id, from_state, to_state)"
    " SELECT ?, id, NULL, 'planned' FROM new_attempts ORDER BY id"
)
_MOVE_KNOWN = (
    "UPDATE cells SET generation = ?, revision = ?, standing = 'listed', max_attempts = ?,"
    " seq = staged.seq FROM (SELECT key, MAX(seq) AS seq FROM plan_rows GROUP BY key) AS staged"
    " WHERE cells.key = staged.key"
)


def plan(
    db: sqlite3.Connection,
    rows: Iterable[PlanRow],
    *,
    generation: int,
    revision: int,
    leftover: str | None,
    max_attempts: int,
    now: Callable[[], str],
    commit: Callable[[sqlite3.Connection], None],
    stop: threading.Event,
) -> tuple[int, int]:
    """`_plan.plan` on PostgreSQL: record `rows` in one transaction; (new cells, rows)."""
    if leftover not in (None, *LEFTOVER):
        raise ValueError(f"leftover {leftover!r} is not one of {LEFTOVER}")
    pg = cast(PgConnection, db)
    added = merged = staged = 0
    try:
        db.execute("BEGIN")
        db.execute(_STAGE)
        iterator = iter(rows)
        chunk = _plan.PLAN_CHUNK  # read here: the tests make it small
        handoff = max(1, min(_plan.PLAN_HANDOFF, chunk))
        while part := list(itertools.islice(iterator, handoff)):
            if stop.is_set():
                raise PlanStopped
            _copy(pg, part, first_seq=merged + staged)
            staged += len(part)
            if staged >= chunk:
                added += _merge(db, staged, generation, revision, max_attempts, now())
                merged, staged = merged + staged, 0
        if staged:
            added += _merge(db, staged, generation, revision, max_attempts, now())
            merged += staged
        if leftover is not None:
            db.execute(
                "UPDATE cells SET standing = ? WHERE standing = 'listed' AND revision < ?",
                (leftover, revision),
            )
        db.execute(
            "UPDATE batch SET generation = ?, revision = ? WHERE id = 1", (generation, revision)
        )
        commit(db)
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return added, merged


def _copy(db: PgConnection, part: list[PlanRow], *, first_seq: int) -> None:
    """Copy `part` into the stage, the first at grid place `first_seq`."""
    with db.raw.cursor() as cur, cur.copy(_COPY) as copy:
        for seq, row in enumerate(part, start=first_seq):
            copy.write_row((seq, *row))


def _merge(
    db: sqlite3.Connection, staged: int, generation: int, revision: int, max_attempts: int,
    now: str,
) -> int:  # fmt: skip
    """Merge the stage into the record, then empty it; how many cells were new."""
    cur = db.execute(_MERGE_NEW, (max_attempts, generation, revision, now, now))
    new = int(cur.rowcount)
    cur.close()
    if new < staged:
        db.execute(_MOVE_KNOWN, (generation, revision, max_attempts)).close()
    db.execute("TRUNCATE plan_rows").close()
    return new
