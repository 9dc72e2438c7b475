"""The store's reads: what the engine, the operations, `zbatch status`, the dataset, the report
and the gallery ask of a batch.

Synchronous functions of the connection, run by `Store._read` on the store's writer thread
between its group transactions (so a read never sees a transition half done, nor one not
yet committed); each returns rows of `_rows.py`. The one read that streams,
`Store.dataset_images`, fetches a chunk per trip and takes its SQL and its rows from here
(`dataset_images_sql`, `dataset_images`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Container, Iterable, Sequence
from typing import Any

from runner.errors import StoreError
from runner.store._rows import (
    FINAL_WORKFLOW_STATES,
    Activity,
    Attempt,
    AttemptState,
    BatchInfo,
    Budget,
    DatasetImage,
    FailureReason,
    GalleryCell,
    GalleryImage,
    PendingImage,
    StoredImage,
)
from runner.store._sql import cursor, fetchall

Db = sqlite3.Connection
CURRENT = "c.generation = (SELECT generation FROM batch WHERE id = 1)"
# `a` is its cell's latest attempt: the one a cell counts as (`cell_counts`, failures).
LATEST = "a.attempt = (SELECT MAX(b.attempt) FROM attempts b WHERE b.cell_key = a.cell_key)"
# The states a cell's latest attempt ends in without success, whose reasons are failures.
ENDED_WITHOUT_SUCCESS = ("failed", "expired", "canceled", "blocked", "rejected")


def scalar(db: Db, sql: str, *params: Any) -> int:
    """The first column of the first row of `sql` as an int (0 when there is none)."""
    with cursor(db, sql, params) as cur:
        row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _one(db: Db, sql: str, *params: Any) -> Any:
    with cursor(db, sql, params) as cur:
        return cur.fetchone()


def _all(db: Db, sql: str, *params: Any) -> list[Any]:
    with cursor(db, sql, params) as cur:
        return list(cur.fetchall())


# -- the engine ---------------------------------------------------------------------------


def attempts(db: Db, where: str, *params: Any) -> list[Attempt]:
    """The attempts `where` picks (a condition on `a`, the attempt, and `c`, its cell)."""
    rows = _all(
        db,
        "SELECT a.id, a.cell_key, a.attempt, a.external_id, a.state, a.reserved_buzz,"
        " a.charged_buzz, a.workflow_id, c.model, c.request, c.estimate_buzz"
        " FROM attempts a JOIN cells c ON c.key = a.cell_key WHERE " + where,
        *params,
    )
    return [
        Attempt(
            id=r["id"],
            cell_key=r["cell_key"],
            attempt=r["attempt"],
            external_id=r["external_id"],
            state=AttemptState(r["state"]),
            reserved_buzz=r["reserved_buzz"],
            charged_buzz=r["charged_buzz"],
            workflow_id=r["workflow_id"],
            model=r["model"],
            request=json.loads(r["request"]),
            estimate_buzz=r["estimate_buzz"],
        )
        for r in rows
    ]


def next_planned(db: Db, limit: int) -> list[Attempt]:
    """Up to `limit` planned attempts of cells in the current manifest, in grid order."""
    return attempts(
        db,
        f"a.state = 'planned' AND {CURRENT} ORDER BY a.attempt > 1, c.seq, a.attempt LIMIT ?",
        limit,
    )


def active(db: Db) -> list[Attempt]:
    """Attempts the API may know of and that are not finished: submitting and running."""
    return attempts(db, "a.state IN ('submitting', 'running') ORDER BY a.id")


def attempt(db: Db, attempt_id: int) -> Attempt:
    """The attempt `attempt_id`; StoreError when there is none."""
    found = attempts(db, "a.id = ?", attempt_id)
    if not found:
        raise StoreError(f"attempt {attempt_id} does not exist")
    return found[0]


def pending_images(
    db: Db, limit: int, skip: Container[tuple[int, int]] = (), owner: int | None = None
) -> list[PendingImage]:
    """Up to `limit` images delivered by the service and not yet on disk, but those whose
    (attempt id, index) is in `skip` (the downloader's in-flight ones: their requests are
    not parsed again each time the downloader looks for more); only those of attempts the
    worker `owner` owns, when given."""
    mine = "" if owner is None else " AND a.owner = ?"
    rows = fetchall(
        db,
        "SELECT i.attempt_id, i.idx, i.blob_id, a.cell_key, a.workflow_id, c.request"
        " FROM images i JOIN attempts a ON a.id = i.attempt_id"
        " JOIN cells c ON c.key = a.cell_key"
        f" WHERE i.state = 'pending'{mine} ORDER BY i.attempt_id, i.idx LIMIT ?",
        (limit,) if owner is None else (owner, limit),
    )
    return [
        PendingImage(
            attempt_id=r["attempt_id"],
            index=r["idx"],
            blob_id=r["blob_id"],
            cell_key=r["cell_key"],
            workflow_id=r["workflow_id"],
            request=json.loads(r["request"]),
        )
        for r in rows
        if (r["attempt_id"], r["idx"]) not in skip
    ]


def budget(db: Db) -> Budget:
    """The cap, what is committed, and how much of it is charged vs only reserved."""
    row = _one(
        db,
        "SELECT cap_buzz, committed_buzz,"
        " (SELECT COALESCE(SUM(charged_buzz), 0) FROM attempts),"
        " (SELECT COALESCE(SUM(reserved_buzz), 0) FROM attempts)"
        " FROM batch WHERE id = 1",
    )
    if row is None:
        raise StoreError("the batch is not initialised")
    return Budget(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def counts(db: Db) -> dict[str, int]:
    """Attempts by state and images by state (`image:<state>`)."""
    out: dict[str, int] = {}
    for state, n in _all(db, "SELECT state, COUNT(*) FROM attempts GROUP BY state"):
        out[state] = n
    for state, n in _all(db, "SELECT state, COUNT(*) FROM images GROUP BY state"):
        out[f"image:{state}"] = n
    return out


def unsubmitted(db: Db) -> tuple[int, int]:
    """Planned attempts of current cells and the sum of their estimates (Buzz)."""
    row = _one(
        db,
        "SELECT COUNT(*), COALESCE(SUM(c.estimate_buzz), 0) FROM attempts a"
        f" JOIN cells c ON c.key = a.cell_key WHERE a.state = 'planned' AND {CURRENT}",
    )
    return (int(row[0]), int(row[1])) if row else (0, 0)


# -- the operations -----------------------------------------------------------------------


def canceled_at(db: Db) -> str | None:
    """When `zbatch cancel` stopped the batch (ISO 8601, UTC), or None."""
    row = _one(db, "SELECT canceled_at FROM batch WHERE id = 1")
    return None if row is None or row[0] is None else str(row[0])


def cell_estimate(db: Db, cell_key: str) -> int | None:
    """The cell's estimated price in Buzz, or None when the batch has no such cell."""
    row = _one(db, "SELECT estimate_buzz FROM cells WHERE key = ?", cell_key)
    return None if row is None else int(row[0])


def downloaded_images(db: Db, after: tuple[int, int], limit: int) -> list[StoredImage]:
    """Up to `limit` downloaded images after `(attempt id, index)`, in that order.

    Only the current file of each path: an image a later attempt of the same cell
    downloaded again (a retry of lost images) replaces the older row's claim on it.
    """
    rows = _all(
        db,
        "SELECT i.attempt_id, i.idx, i.path, i.sha256, i.size_bytes, i.blob_id,"
        " a.cell_key, a.workflow_id, c.request"
        " FROM images i JOIN attempts a ON a.id = i.attempt_id"
        " JOIN cells c ON c.key = a.cell_key"
        " WHERE i.state = 'downloaded' AND (i.attempt_id > ? OR"
        " (i.attempt_id = ? AND i.idx > ?)) AND NOT EXISTS (SELECT 1 FROM attempts b"
        " JOIN images j ON j.attempt_id = b.id WHERE b.cell_key = a.cell_key"
        " AND b.attempt > a.attempt AND j.idx = i.idx AND j.state = 'downloaded')"
        " ORDER BY i.attempt_id, i.idx LIMIT ?",
        after[0],
        after[0],
        after[1],
        limit,
    )
    return [
        StoredImage(
            attempt_id=r["attempt_id"],
            index=r["idx"],
            cell_key=r["cell_key"],
            path=r["path"],
            sha256=r["sha256"],
            size_bytes=r["size_bytes"],
            blob_id=r["blob_id"],
            workflow_id=r["workflow_id"],
            request=json.loads(r["request"]),
        )
        for r in rows
    ]


# -- `zbatch status` (offline, often through `open(read_only=True)`) -------------------------


def batch_counters(db: Db) -> tuple[int, int]:
    """The batch's generation and manifest revision."""
    row = _one(db, "SELECT generation, revision FROM batch WHERE id = 1")
    if row is None:
        raise StoreError("the batch is not initialised")
    return int(row[0]), int(row[1])


def batch_info(db: Db) -> BatchInfo:
    """The batch row: its name, API tag, cap and when it was created."""
    row = _one(db, "SELECT name, tag, cap_buzz, created_at FROM batch WHERE id = 1")
    if row is None:
        raise StoreError("the database holds no batch yet (a run stopped before planning)")
    return BatchInfo(name=row[0], tag=row[1], cap_buzz=int(row[2]), created_at=row[3])


def cell_counts(db: Db) -> dict[str, int]:
    """Cells by the state of their latest attempt: a retried cell counts once, as its retry."""
    rows = _all(
        db,
        "SELECT a.state, COUNT(*) FROM attempts a WHERE a.attempt ="
        " (SELECT MAX(b.attempt) FROM attempts b WHERE b.cell_key = a.cell_key)"
        " GROUP BY a.state",
    )
    return {state: int(n) for state, n in rows}


def failure_reasons(db: Db, limit: int) -> list[FailureReason]:
    """The most frequent reasons cells ended without success (by their latest attempt) and
    images of latest attempts were lost; a cell with no recorded reason counts under its
    state's name. A failed attempt that was retried is not a failure: its retry stands."""
    marks = ",".join("?" for _ in ENDED_WITHOUT_SUCCESS)
    with cursor(
        db,
        "SELECT a.state AS kind, COALESCE(a.reason, a.state) AS reason, COUNT(*) AS n"
        f" FROM attempts a WHERE a.state IN ({marks}) AND {LATEST}"
        " GROUP BY a.state, COALESCE(a.reason, a.state)"
        " UNION ALL"
        " SELECT 'image:lost' AS kind, COALESCE(i.reason, 'no reason recorded') AS reason,"
        " COUNT(*) AS n FROM images i JOIN attempts a ON a.id = i.attempt_id"
        f" WHERE i.state = 'lost' AND {LATEST}"
        " GROUP BY COALESCE(i.reason, 'no reason recorded')"
        " ORDER BY n DESC, kind, reason LIMIT ?",
        (*ENDED_WITHOUT_SUCCESS, limit),
    ) as cur:
        rows = cur.fetchall()
    return [FailureReason(kind=r[0], reason=r[1], count=int(r[2])) for r in rows]


def last_event_at(db: Db) -> str | None:
    """When the last transition was recorded (ISO 8601, UTC), or None before any."""
    row = _one(db, "SELECT at FROM events ORDER BY id DESC LIMIT 1")
    return str(row[0]) if row else None


# -- the dataset, `zbatch export` and `zbatch report` ----------------------------------------


def database_file(db: Db) -> str | None:
    """The file the connection's main database is in (None for an in-memory one)."""
    row = _one(db, "SELECT file FROM pragma_database_list WHERE name = 'main'")
    return str(row[0]) if row is not None and row[0] else None


def dataset_images_sql(states: Sequence[str], *, all_cells: bool = False) -> str:
    """The query of `Store.dataset_images`: images in `states` (bound in that order) with
    their attempt and cell, ordered by path, then attempt and index (images not on disk
    first): the order `refresh_dataset` merges its previous file by. Cells a `--replace`
    left out of the manifest are left out too, unless `all_cells`."""
    marks = ",".join("?" for _ in states)
    standing = "" if all_cells else " AND c.standing != 'replaced'"
    return (
        "SELECT i.attempt_id, i.idx, i.state, i.path, i.sha256, i.size_bytes, i.width,"
        " i.height, i.reason, a.cell_key, a.attempt, a.workflow_id, a.charged_buzz,"
        " a.updated_at AS finished_at, c.model, c.request, c.vars, t.created_at, c.revision"
        " FROM images i JOIN attempts a ON a.id = i.attempt_id"
        " JOIN cells c ON c.key = a.cell_key"
        " LEFT JOIN (SELECT attempt_id, MIN(at) AS created_at FROM events"
        "  WHERE to_state = 'running' GROUP BY attempt_id) t ON t.attempt_id = i.attempt_id"
        f" WHERE i.state IN ({marks}){standing} ORDER BY i.path, i.attempt_id, i.idx"
    )


def dataset_images(rows: Iterable[sqlite3.Row]) -> list[DatasetImage]:
    """Rows of `dataset_images_sql` as records; JSON columns are parsed on first use."""
    return [
        DatasetImage(
            attempt_id=r[0],
            index=r[1],
            state=r[2],
            path=r[3],
            sha256=r[4],
            size_bytes=r[5],
            width=r[6],
            height=r[7],
            reason=r[8],
            cell_key=r[9],
            attempt=r[10],
            workflow_id=r[11],
            charged_buzz=r[12],
            finished_at=r[13],
            model=r[14],
            request_json=r[15],
            vars_json=r[16],
            created_at=r[17],
            revision=r[18],
        )
        for r in rows
    ]


def var_names(db: Db) -> list[str]:
    """Every template variable name any cell has, sorted."""
    names: set[str] = set()
    with cursor(db, "SELECT DISTINCT vars FROM cells") as cur:
        while rows := cur.fetchmany(1_000):
            for (text,) in rows:
                names.update(json.loads(text))
    return sorted(names)


def activity(db: Db) -> Activity:
    """Refunds and the first and last event, from the events table.

    Every transition records its Buzz: `submitting` the price reserved, `running` what
    the workflow had charged when the service answered, the outcome what it finally
    cost. A workflow that did not succeed (failed, expired, canceled, blocked) is
    refunded its price (the higher of those two) minus its final charge: the service
    may have refunded it before the runner first saw it, so `running` can already be
    0. A succeeded workflow is refunded only what its final charge fell below `running`.
    """
    unsuccessful = ("failed", "expired", "canceled", "blocked")
    finals = ",".join("?" for _ in FINAL_WORKFLOW_STATES)
    lost = ",".join("?" for _ in unsuccessful)
    refund = _one(
        db,
        "SELECT COALESCE(SUM(refund), 0), COUNT(*) FROM ("
        f" SELECT CASE WHEN fin_state IN ({lost}) THEN"
        "  (CASE WHEN COALESCE(ran, 0) > COALESCE(res, 0) THEN COALESCE(ran, 0)"
        "   ELSE COALESCE(res, 0) END) - fin"
        "  ELSE COALESCE(ran, fin) - fin END AS refund FROM ("
        "  SELECT MAX(CASE WHEN to_state = 'submitting' THEN buzz END) AS res,"
        "   MAX(CASE WHEN to_state = 'running' THEN buzz END) AS ran,"
        f"  MAX(CASE WHEN to_state IN ({finals}) THEN buzz END) AS fin,"
        f"  MAX(CASE WHEN to_state IN ({finals}) THEN to_state END) AS fin_state"
        "  FROM events WHERE attempt_id IS NOT NULL GROUP BY attempt_id) per"
        "  WHERE fin IS NOT NULL) r WHERE refund > 0",
        *unsuccessful,
        *FINAL_WORKFLOW_STATES,
        *FINAL_WORKFLOW_STATES,
    )
    span = _one(db, "SELECT MIN(at), MAX(at) FROM events")
    return Activity(
        refunded_buzz=int(refund[0]) if refund else 0,
        refunded_attempts=int(refund[1]) if refund else 0,
        first_event_at=span[0] if span else None,
        last_event_at=span[1] if span else None,
    )


# -- `zbatch gallery` ---------------------------------------------------------------------------


def gallery_cells(db: Db, all_cells: bool = False) -> list[GalleryCell]:
    """Cells of the current manifest and any older cell with images, in grid order, each
    with its latest attempt's state and every image of every attempt. Cells a `--replace`
    left out of the manifest are left out too, unless `all_cells`."""
    standing = "" if all_cells else "c.standing != 'replaced' AND "
    cells = _all(
        db,
        "SELECT c.key, c.seq, c.replica, c.model, c.request, c.vars, c.estimate_buzz,"
        " COALESCE((SELECT SUM(a.charged_buzz) FROM attempts a WHERE a.cell_key = c.key), 0)"
        f" AS charged FROM cells c WHERE {standing}({CURRENT}"
        " OR EXISTS (SELECT 1 FROM attempts b JOIN images i ON i.attempt_id = b.id"
        " WHERE b.cell_key = c.key))"
        " ORDER BY c.seq, c.replica, c.key",
    )
    latest: dict[str, tuple[int, str, str | None]] = {}
    for key, number, state, workflow in _all(
        db, "SELECT cell_key, attempt, state, workflow_id FROM attempts"
    ):
        if key not in latest or number > latest[key][0]:
            latest[key] = (number, state, workflow)
    images = _gallery_images(db)
    return [
        GalleryCell(
            key=r[0],
            seq=r[1],
            replica=r[2],
            model=r[3],
            request=json.loads(r[4]),
            vars=json.loads(r[5]),
            estimate_buzz=r[6],
            charged_buzz=r[7],
            state=latest.get(r[0], (0, "planned", None))[1],
            workflow_id=latest.get(r[0], (0, "planned", None))[2],
            images=tuple(images.get(r[0], ())),
        )
        for r in cells
    ]


def _gallery_images(db: Db) -> dict[str, list[GalleryImage]]:
    """Every image of every attempt, by cell key, in attempt and index order."""
    images: dict[str, list[GalleryImage]] = {}
    for r in _all(
        db,
        "SELECT a.cell_key, a.attempt, a.workflow_id, i.idx, i.state, i.path, i.sha256,"
        " i.size_bytes, i.width, i.height FROM images i"
        " JOIN attempts a ON a.id = i.attempt_id ORDER BY a.cell_key, a.attempt, i.idx",
    ):
        images.setdefault(r[0], []).append(
            GalleryImage(
                index=r[3],
                state=r[4],
                path=r[5],
                sha256=r[6],
                size_bytes=r[7],
                width=r[8],
                height=r[9],
                attempt=r[1],
                workflow_id=r[2],
            )
        )
    return images
