"""Workers draining one batch: join, heartbeat, sweep, claim (docs/design/scale-out.md, 3-4).

Synchronous functions of one open transaction (`Tx`), run by `_workers.Worker` through the
store's writer like every transition. Leases are in database time only (seconds since the
epoch by the database's clock; hosts' clocks are never compared). On PostgreSQL the claim
takes the ledger's row first (`FOR UPDATE`), so claims of all workers queue there: the
in-flight count taken after it is every worker's, and the cap guard sees every reservation;
the rows it claims are picked `FOR UPDATE SKIP LOCKED`. SQLite has one writer and one worker.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from runner.store import _reads as reads
from runner.store._fence import LeaseLost
from runner.store._rows import Attempt
from runner.store._transitions import Tx, reserve

# The database's clock, in seconds since the epoch (`now()` is the transaction's start on
# PostgreSQL: a lease it grants ends no later than it would by the clock at COMMIT).
_NOW_SQLITE = "((julianday('now') - 2440587.5) * 86400.0)"
_NOW_PG = "(extract(epoch from now())::double precision)"
_IN_FLIGHT = "('submitting', 'running')"
# What an owner must finish: in flight, or ended with images still to download.
_UNFINISHED = (
    f"(state IN {_IN_FLIGHT} OR EXISTS (SELECT 1 FROM images i"
    " WHERE i.attempt_id = attempts.id AND i.state = 'pending'))"
)


def _pg(db: sqlite3.Connection) -> bool:
    return not isinstance(db, sqlite3.Connection)


def db_now(db: sqlite3.Connection) -> str:
    """The SQL of the database's clock (seconds since the epoch) on `db`'s backend."""
    return _NOW_PG if _pg(db) else _NOW_SQLITE


def _locking(db: sqlite3.Connection, clause: str) -> str:
    """`clause` (a row lock) on PostgreSQL; nothing on SQLite, whose one writer holds all."""
    return f" {clause}" if _pg(db) else ""


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim took: planned attempts now `submitting` with their reservations (the
    intents, committed before any request leaves), and orphans (unfinished attempts of dead
    or departed workers: `submitting` to resubmit by externalId, `running` to poll, ended
    with images to download); each with its epoch."""

    planned: list[tuple[Attempt, int]]
    orphans: list[tuple[Attempt, int]]


def join(tx: Tx, name: str, host: str, pid: int, out: str | None, lease_s: float) -> int:
    """A new live worker with a lease of `lease_s` seconds from now; its id."""
    now = db_now(tx.db)
    row = tx.db.execute(
        "INSERT INTO workers (name, host, pid, out, started_at, heartbeat_at, lease_until,"
        f" state) VALUES (?, ?, ?, ?, {now}, {now}, {now} + ?, 'live') RETURNING id",
        (name, host, pid, out, lease_s),
    ).fetchone()
    return int(row[0])


def heartbeat(tx: Tx, worker: int, lease_s: float) -> None:
    """Renew `worker`'s lease; `LeaseLost` when it is no longer live (declared dead)."""
    now = db_now(tx.db)
    cur = tx.db.execute(
        f"UPDATE workers SET heartbeat_at = {now}, lease_until = {now} + ?"
        " WHERE id = ? AND state = 'live'",
        (lease_s, worker),
    )
    if cur.rowcount != 1:
        raise LeaseLost(
            f"worker {worker} was declared dead (its lease ran out): another worker took"
            " over its attempts; it stops here"
        )


def sweep(tx: Tx) -> list[int]:
    """Workers whose lease ran out become dead, their unfinished attempts (in flight, or
    with images to download) orphans (owner NULL: the next claim's epoch fences their old
    owner out); the workers declared dead."""
    now = db_now(tx.db)
    dead = [
        int(r[0])
        for r in tx.db.execute(
            f"UPDATE workers SET state = 'dead' WHERE state = 'live' AND lease_until < {now}"
            " RETURNING id"
        ).fetchall()
    ]
    for worker in dead:
        _release(tx, worker)
    return dead


def leave(tx: Tx, worker: int) -> None:
    """`worker` stops: its row `left`, its in-flight attempts orphans at once (another
    worker need not wait for its lease to run out)."""
    tx.db.execute("UPDATE workers SET state = 'left' WHERE id = ? AND state = 'live'", (worker,))
    _release(tx, worker)


def _release(tx: Tx, worker: int) -> None:
    tx.db.execute(
        f"UPDATE attempts SET owner = NULL WHERE owner = ? AND {_UNFINISHED}",
        (worker,),
    )


def live_workers(db: sqlite3.Connection) -> list[tuple[int, str, float]]:
    """(id, name, seconds left of its lease) of each live worker, by id."""
    rows = db.execute(
        f"SELECT id, name, lease_until - {db_now(db)} FROM workers WHERE state = 'live' ORDER BY id"
    ).fetchall()
    return [(int(r[0]), str(r[1]), float(r[2])) for r in rows]


def claim(
    tx: Tx, worker: int, in_flight: int, limit: int,
    priced: Sequence[tuple[int, int]] | None = None,
) -> Claimed:  # fmt: skip
    """In one transaction: the orphans of dead workers, then up to `limit` planned attempts
    reserved (`reserve`: the cap's guard on the ledger row), never more than make the
    batch's `submitting + running` total, across all workers, exceed `in_flight`. `priced`
    (attempt id, price to reserve): the candidates, as the submitter priced them (the
    service's whatif price when it is higher than the formula's); else the next in grid
    order at their cells' estimates.

    `LeaseLost` when `worker` is not live with a lease still running: a worker whose lease
    ran out claims nothing, even before a sweep declared it dead."""
    now = db_now(tx.db)
    cur = tx.db.execute(
        "UPDATE workers SET state = state WHERE id = ? AND state = 'live'"
        f" AND lease_until >= {now}",
        (worker,),
    )
    if cur.rowcount != 1:
        raise LeaseLost(f"worker {worker} has no running lease: it claims nothing")
    tx.db.execute("SELECT committed_buzz FROM batch WHERE id = 1" + _locking(tx.db, "FOR UPDATE"))
    orphans = _own(
        tx, worker,
        [int(r[0]) for r in tx.db.execute(
            f"SELECT id FROM attempts WHERE owner IS NULL AND {_UNFINISHED}"
            " ORDER BY id LIMIT ?" + _locking(tx.db, "FOR UPDATE SKIP LOCKED"),
            (max(limit, 1),),
        ).fetchall()],
    )  # fmt: skip
    busy = int(
        tx.db.execute(f"SELECT count(*) FROM attempts WHERE state IN {_IN_FLIGHT}").fetchone()[0]
    )
    room = min(limit, in_flight - busy)
    taken: list[int] = []
    unfenced = Tx(tx.db, tx.now)  # planned rows are no one's yet: this claim makes them ours
    for attempt_id, estimate_buzz in _candidates(tx, max(room, 0), priced)[: max(room, 0)]:
        if not reserve(unfenced, attempt_id, estimate_buzz):
            break
        taken.append(attempt_id)
    return Claimed(planned=_own(tx, worker, taken), orphans=orphans)


def _candidates(
    tx: Tx, room: int, priced: Sequence[tuple[int, int]] | None
) -> list[tuple[int, int]]:
    """The planned attempts to reserve, each with its price, locked for this claim (rows
    another claim holds are skipped): of `priced` (attempt id, price), those still planned,
    in its order; else the next `room` in grid order at their cells' estimates."""
    if room <= 0:
        return []
    if priced is None:
        rows = tx.db.execute(
            "SELECT a.id, c.estimate_buzz FROM attempts a JOIN cells c ON c.key = a.cell_key"
            f" WHERE a.state = 'planned' AND {reads.CURRENT}"
            " ORDER BY a.attempt > 1, c.seq, a.attempt LIMIT ?"
            + _locking(tx.db, "FOR UPDATE OF a SKIP LOCKED"),
            (room,),
        ).fetchall()
        return [(int(r[0]), int(r[1])) for r in rows]
    if not priced:
        return []
    marks = ",".join("?" for _ in priced)
    free = {
        int(r[0])
        for r in tx.db.execute(
            f"SELECT id FROM attempts WHERE state = 'planned' AND id IN ({marks})"
            + _locking(tx.db, "FOR UPDATE SKIP LOCKED"),
            tuple(i for i, _ in priced),
        ).fetchall()
    }
    return [(i, price) for i, price in priced if i in free]


def _own(tx: Tx, worker: int, ids: list[int]) -> list[tuple[Attempt, int]]:
    """Make `worker` the owner of `ids` at a new epoch each; the attempts and epochs."""
    epochs: dict[int, int] = {}
    for attempt_id in ids:
        row = tx.db.execute(
            "UPDATE attempts SET owner = ?, owner_epoch = owner_epoch + 1 WHERE id = ?"
            " RETURNING owner_epoch",
            (worker, attempt_id),
        ).fetchone()
        epochs[attempt_id] = int(row[0])
    if not ids:
        return []
    marks = ",".join("?" for _ in ids)
    found = {a.id: a for a in reads.attempts(tx.db, f"a.id IN ({marks})", *ids)}
    return [(found[i], epochs[i]) for i in ids]
