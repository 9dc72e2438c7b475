"""The store's reads: what the engine, `zbatch run`'s summary and `zbatch status` ask of a batch.

Part of the store (`store.py` writes, this module reads; both own their SQL). `Store`
inherits these methods; every query takes the connection lock, so a read never sees a
transaction of another task half done.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Container, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio

from runner.dataset._gallery_grid import GalleryCell, GalleryImage
from runner.errors import StoreError
from runner.store._rows import (
    Attempt,
    AttemptState,
    BatchInfo,
    Budget,
    FailureReason,
    PendingImage,
)

if TYPE_CHECKING:
    from runner.store._store import Store

FINAL_WORKFLOW_STATES = ("succeeded", "failed", "expired", "canceled", "blocked")


@dataclass(frozen=True)
class DatasetImage:
    """One image joined with the attempt and cell that made it: a dataset or export row."""

    attempt_id: int
    index: int
    state: str  # the image's: downloaded, pending or lost
    path: str | None  # relative to OUT, once downloaded
    sha256: str | None
    size_bytes: int | None
    width: int | None  # measured on the downloaded file
    height: int | None
    reason: str | None  # why it was lost
    cell_key: str
    attempt: int
    workflow_id: str | None
    model: str
    request_json: str  # the cell's request, parsed on first use (`request`)
    vars_json: str  # its template variables (`vars`)
    charged_buzz: int  # the whole attempt's charge (every image of it)
    created_at: str | None  # when the service answered with the workflow id
    finished_at: str  # the attempt's last transition: its outcome

    @functools.cached_property
    def request(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.request_json)
        return parsed

    @functools.cached_property
    def vars(self) -> dict[str, str]:
        parsed: dict[str, str] = json.loads(self.vars_json)
        return parsed


@dataclass(frozen=True)
class Activity:
    """What the events table says about a batch's Buzz refunds and its time span."""

    refunded_buzz: int  # charged when running, given back by the final charge
    refunded_attempts: int
    first_event_at: str | None
    last_event_at: str | None


class StoreReads:
    """Read-only queries over the batch database (mixed into `Store`)."""

    _db: aiosqlite.Connection
    _lock: anyio.Lock

    async def next_planned(self, limit: int) -> list[Attempt]:
        """Up to `limit` planned attempts of cells in the current manifest, in grid order."""
        return await self._attempts(
            "a.state = 'planned' AND c.generation = (SELECT generation FROM batch WHERE id = 1)"
            " ORDER BY a.attempt > 1, c.seq, a.attempt LIMIT ?",
            limit,
        )

    async def active(self) -> list[Attempt]:
        """Attempts the API may know of and that are not finished: submitting and running."""
        return await self._attempts("a.state IN ('submitting', 'running') ORDER BY a.id")

    async def attempt(self, attempt_id: int) -> Attempt:
        found = await self._attempts("a.id = ?", attempt_id)
        if not found:
            raise StoreError(f"attempt {attempt_id} does not exist")
        return found[0]

    async def pending_images(
        self, limit: int, *, skip: Container[tuple[int, int]] = ()
    ) -> list[PendingImage]:
        """Up to `limit` images delivered by the service and not yet on disk, but those whose
        (attempt id, index) is in `skip` (the downloader's in-flight ones: their requests are
        not parsed again each time the downloader looks for more)."""
        async with self._lock:
            rows = await self._db.execute_fetchall(
                "SELECT i.attempt_id, i.idx, i.blob_id, a.cell_key, a.workflow_id, c.request"
                " FROM images i JOIN attempts a ON a.id = i.attempt_id"
                " JOIN cells c ON c.key = a.cell_key"
                " WHERE i.state = 'pending' ORDER BY i.attempt_id, i.idx LIMIT ?",
                (limit,),
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

    # -- reading ------------------------------------------------------------------------

    async def budget(self) -> Budget:
        """The cap, what is committed, and how much of it is charged vs only reserved."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT cap_buzz, committed_buzz,"
                " (SELECT COALESCE(SUM(charged_buzz), 0) FROM attempts),"
                " (SELECT COALESCE(SUM(reserved_buzz), 0) FROM attempts)"
                " FROM batch WHERE id = 1"
            ) as cur,
        ):
            row = await cur.fetchone()
        if row is None:
            raise StoreError("the batch is not initialised")
        return Budget(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def counts(self) -> dict[str, int]:
        """Attempts by state and images by state (`image:<state>`)."""
        out: dict[str, int] = {}
        async with (
            self._lock,
            self._db.execute("SELECT state, COUNT(*) FROM attempts GROUP BY state") as cur,
        ):
            for state, n in await cur.fetchall():
                out[state] = n
        async with (
            self._lock,
            self._db.execute("SELECT state, COUNT(*) FROM images GROUP BY state") as cur,
        ):
            for state, n in await cur.fetchall():
                out[f"image:{state}"] = n
        return out

    async def unsubmitted(self) -> tuple[int, int]:
        """Planned attempts of current cells and the sum of their estimates (Buzz)."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(c.estimate_buzz), 0) FROM attempts a"
                " JOIN cells c ON c.key = a.cell_key WHERE a.state = 'planned'"
                " AND c.generation = (SELECT generation FROM batch WHERE id = 1)"
            ) as cur,
        ):
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # -- reading for `zbatch status` (offline, often through `open(read_only=True)`) -------

    async def batch_info(self) -> BatchInfo:
        """The batch row: its name, API tag, cap and when it was created."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT name, tag, cap_buzz, created_at FROM batch WHERE id = 1"
            ) as cur,
        ):
            row = await cur.fetchone()
        if row is None:
            raise StoreError("the database holds no batch yet (a run stopped before planning)")
        return BatchInfo(name=row[0], tag=row[1], cap_buzz=int(row[2]), created_at=row[3])

    async def cell_counts(self) -> dict[str, int]:
        """Cells by the state of their latest attempt: a retried cell counts once, as its retry."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT a.state, COUNT(*) FROM attempts a WHERE a.attempt ="
                " (SELECT MAX(b.attempt) FROM attempts b WHERE b.cell_key = a.cell_key)"
                " GROUP BY a.state"
            ) as cur,
        ):
            return {state: int(n) for state, n in await cur.fetchall()}

    async def failure_reasons(self, limit: int) -> list[FailureReason]:
        """The most frequent reasons attempts ended without success and images were lost.

        Attempts count as their state (`failed`, `blocked`, ...), lost images as `image:lost`;
        an attempt with no recorded reason counts under its state's name.
        """
        async with (
            self._lock,
            self._db.execute(
                "SELECT state AS kind, COALESCE(reason, state) AS reason, COUNT(*) AS n"
                " FROM attempts WHERE state NOT IN ('planned', 'submitting', 'running',"
                " 'succeeded') GROUP BY state, COALESCE(reason, state)"
                " UNION ALL"
                " SELECT 'image:lost' AS kind, COALESCE(reason, 'no reason recorded') AS reason,"
                " COUNT(*) AS n FROM images WHERE state = 'lost'"
                " GROUP BY COALESCE(reason, 'no reason recorded')"
                " ORDER BY n DESC, kind, reason LIMIT ?",
                (limit,),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [FailureReason(kind=r[0], reason=r[1], count=int(r[2])) for r in rows]

    async def last_event_at(self) -> str | None:
        """When the last transition was recorded (ISO 8601, UTC), or None before any."""
        async with (
            self._lock,
            self._db.execute("SELECT at FROM events ORDER BY id DESC LIMIT 1") as cur,
        ):
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def _scalar(self, sql: str, *params: Any) -> int:
        async with self._lock, self._db.execute(sql, params) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def _attempts(self, where: str, *params: Any) -> list[Attempt]:
        async with (
            self._lock,
            self._db.execute(
                "SELECT a.id, a.cell_key, a.attempt, a.external_id, a.state, a.reserved_buzz,"
                " a.charged_buzz, a.workflow_id, c.model, c.request, c.estimate_buzz"
                " FROM attempts a JOIN cells c ON c.key = a.cell_key WHERE " + where,
                params,
            ) as cur,
        ):
            rows = await cur.fetchall()
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

    # -- reading for the dataset, `zbatch export` and `zbatch report` ----------------------

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Store]:
        """A read-only store of its own on the same database file, closed on exit.

        Long reads (`dataset_images`) hold their connection for the whole iteration; on a
        reader of their own they never delay a running engine's transitions, and they see
        one consistent snapshot.
        """
        from runner.store._store import Store

        async with (
            self._lock,
            self._db.execute("SELECT file FROM pragma_database_list WHERE name = 'main'") as cur,
        ):
            row = await cur.fetchone()
        if row is None or not row[0]:
            raise StoreError("the batch database has no file to open a reader on")
        store = await Store.open(Path(row[0]), read_only=True)
        async with store:
            yield store

    async def dataset_images(
        self, states: Sequence[str] = ("downloaded",), *, chunk: int = 2_000
    ) -> AsyncGenerator[list[DatasetImage], None]:
        """Images in `states` with their attempt and cell, in chunks, ordered by path.

        The order (images not on disk first, by attempt and index) is stable, and it is what
        `refresh_dataset` merges its previous file by. One statement streamed `chunk` rows
        at a time, so a million images never sit in memory. It holds this connection until
        the iteration ends (close it with `contextlib.aclosing`): during a run, call it on
        `reader()`, not on the engine's store.
        """
        marks = ",".join("?" for _ in states)
        sql = (
            "SELECT i.attempt_id, i.idx, i.state, i.path, i.sha256, i.size_bytes, i.width,"
            " i.height, i.reason, a.cell_key, a.attempt, a.workflow_id, a.charged_buzz,"
            " a.updated_at AS finished_at, c.model, c.request, c.vars, t.created_at"
            " FROM images i JOIN attempts a ON a.id = i.attempt_id"
            " JOIN cells c ON c.key = a.cell_key"
            " LEFT JOIN (SELECT attempt_id, MIN(at) AS created_at FROM events"
            "  WHERE to_state = 'running' GROUP BY attempt_id) t ON t.attempt_id = i.attempt_id"
            f" WHERE i.state IN ({marks}) ORDER BY i.path, i.attempt_id, i.idx"
        )
        async with self._lock, self._db.execute(sql, tuple(states)) as cur:
            while rows := await cur.fetchmany(chunk):
                yield _dataset_images(rows)

    async def var_names(self) -> list[str]:
        """Every template variable name any cell has, sorted."""
        names: set[str] = set()
        async with self._lock, self._db.execute("SELECT DISTINCT vars FROM cells") as cur:
            while rows := await cur.fetchmany(1_000):
                for (text,) in rows:
                    names.update(json.loads(text))
        return sorted(names)

    async def activity(self) -> Activity:
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
        async with (
            self._lock,
            self._db.execute(
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
                (*unsuccessful, *FINAL_WORKFLOW_STATES, *FINAL_WORKFLOW_STATES),
            ) as cur,
        ):
            refund = await cur.fetchone()
        async with (
            self._lock,
            self._db.execute("SELECT MIN(at), MAX(at) FROM events") as cur,
        ):
            span = await cur.fetchone()
        return Activity(
            refunded_buzz=int(refund[0]) if refund else 0,
            refunded_attempts=int(refund[1]) if refund else 0,
            first_event_at=span[0] if span else None,
            last_event_at=span[1] if span else None,
        )

    # -- reading for `zbatch gallery` -----------------------------------------------------

    async def gallery_cells(self) -> list[GalleryCell]:
        """Cells of the current manifest and any older cell with images, in grid order, each
        with its latest attempt's state and every image of every attempt."""
        cells = await self._rows(
            "SELECT c.key, c.seq, c.replica, c.model, c.request, c.vars, c.estimate_buzz,"
            " COALESCE((SELECT SUM(a.charged_buzz) FROM attempts a WHERE a.cell_key = c.key), 0)"
            " AS charged FROM cells c"
            " WHERE c.generation = (SELECT generation FROM batch WHERE id = 1)"
            " OR EXISTS (SELECT 1 FROM attempts b JOIN images i ON i.attempt_id = b.id"
            " WHERE b.cell_key = c.key)"
            " ORDER BY c.seq, c.replica, c.key"
        )
        latest: dict[str, tuple[int, str, str | None]] = {}
        for key, attempt, state, workflow in await self._rows(
            "SELECT cell_key, attempt, state, workflow_id FROM attempts"
        ):
            if key not in latest or attempt > latest[key][0]:
                latest[key] = (attempt, state, workflow)
        images: dict[str, list[GalleryImage]] = {}
        for r in await self._rows(
            "SELECT a.cell_key, a.attempt, a.workflow_id, i.idx, i.state, i.path, i.sha256,"
            " i.size_bytes, i.width, i.height FROM images i"
            " JOIN attempts a ON a.id = i.attempt_id ORDER BY a.cell_key, a.attempt, i.idx"
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

    async def _rows(self, sql: str) -> list[Any]:
        async with self._lock, self._db.execute(sql) as cur:
            return list(await cur.fetchall())


def _dataset_images(rows: Iterable[aiosqlite.Row]) -> list[DatasetImage]:
    """Rows of the `dataset_images` query as records; JSON columns are parsed on first use."""
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
        )
        for r in rows
    ]
