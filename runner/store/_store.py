"""The batch database: one `Store` owns the connection (its writer thread) and every transaction.

The database is the single source of truth of a batch. Each transition is one synchronous
function run whole with a guard on the current state, committed before its caller goes on,
so a crash between any two transitions leaves a state the next `zbatch run` knows how to
continue (docs/states.md).

```
attempt:  planned -> submitting -> running -> succeeded | failed | expired | canceled
                         |   \\-> rejected (4xx: nothing spent)
                         \\-----> blocked  (moderation)      (also from running)
image:    pending -> downloaded | lost
```

Where things are: the transitions are functions of one open transaction, `fn(tx, ...)`
(datasette's manner), in `_transitions.py` (the run's), `_ops.py` (retry, cancel, adopt,
verify --repair) and `_plan.py` (the batch row, the cells, the fingerprint); the reads are
functions of the connection in `_reads.py`; the rows they return are in `_rows.py`; opening
and migrating is `_open.py`. Only this class runs them, on the writer's thread (`_writer.py`, by
way of `Connected` in `_connected.py`): `_tx(fn, ...)` in a group transaction, each in a
savepoint of its own, `_read(fn, ...)` between them.

Why thin methods rather than `store.tx(transitions.reserve, ...)` at the call sites: the
engine, the operations, the CLI and the tests call `await store.reserve(a.id, estimate)`,
which reads as what it does, keeps their code independent of where a transition is
written, and gives the tests one seam to wrap (`Store.reserve`, `Store._commit`). Each method
is one line that names the function doing the work.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Collection,
    Container,
    Iterable,
    Sequence,
)
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import anyio

from runner.disk import BatchLock, database_error
from runner.errors import StoreError
from runner.identity import PlanRow
from runner.store import _ops as ops
from runner.store import _plan as planning
from runner.store import _reads as reads
from runner.store import _transitions as transitions
from runner.store._connected import Connected
from runner.store._open import connect_or_set_aside, connect_read_only, disk_refusal
from runner.store._rows import (
    Activity,
    Adoption,
    Attempt,
    AttemptState,
    BatchInfo,
    Budget,
    Comparison,
    DatasetImage,
    FailureReason,
    GalleryCell,
    ImageOutcome,
    PendingImage,
    PlanResult,
    RetryPlan,
    StoredImage,
)
from runner.store._settings import RunSettings, read_run_settings, save_run_settings

P = ParamSpec("P")
T = TypeVar("T")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Store(Connected):
    """The batch database. Open with `await Store.open(path)`; use as an async context manager."""

    _plan = staticmethod(planning.plan)  # PostgreSQL's store plans with its own (_pg_plan.py)

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        lock: bool = True,
        read_only: bool = False,
        set_aside_damaged: bool = False,
        now: Callable[[], str] = _utc_now,
    ) -> Store:
        """Open (creating and migrating) the database at `path`; take the batch lock if asked.

        `read_only=True` (for `zbatch status`) opens an existing database as a reader only:
        no lock, no migration, no write; it works while a run holds the batch.

        A database that cannot be used is refused before anything in it changes, each with
        its own error (`_open.py`); another runner holding the batch is `BatchInUse`. With
        `set_aside_damaged` (`zbatch run --adopt`) the whole database is checked (`PRAGMA
        quick_check`) and a damaged one is renamed aside, never deleted (`set_aside`), and
        a new one is made.
        """
        if read_only:
            reader = cls(None, now, path)
            reader.read_only = True
            await reader._connect(lambda: (connect_read_only(path), None))
            return reader
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_refusal(exc, path, "creating the output folder") from exc
        batch_lock = BatchLock(path) if lock else None
        if batch_lock is not None:
            batch_lock.acquire()
        store = cls(batch_lock, now, path)
        try:
            await store._connect(
                lambda: connect_or_set_aside(path, set_aside_damaged=set_aside_damaged)
            )
        except BaseException:
            if batch_lock is not None:
                batch_lock.release()
            raise
        return store

    # -- planning (`_plan.py`) ---------------------------------------------------------------

    async def init_batch(
        self, *, name: str, tag: str, cap_buzz: int | None, manifest_cap_buzz: int | None = None,
        manifest_sha256: str | None = None, rename: bool = False,
    ) -> None:  # fmt: skip
        """Create the batch row, or update its cap and manifest hash (the name must match,
        unless `rename`). The cap is `cap_buzz` when given, else the last cap given, or the
        manifest's (`manifest_cap_buzz`) for a new batch or when it changed (`_plan.py`)."""
        await self._tx(
            planning.init_batch, name=name, tag=tag, cap_buzz=cap_buzz, rename=rename,
            manifest_cap_buzz=manifest_cap_buzz, manifest_sha256=manifest_sha256,
        )  # fmt: skip

    async def plan_rows(
        self, rows: Iterable[PlanRow], *, max_attempts: int, leftover: str | None = None
    ) -> PlanResult:
        """Record the manifest's cells (idempotent); new cells get a planned first attempt.

        Cells already known keep their record; cells no longer in the manifest keep theirs
        too, no longer handed out (`generation` moves on), and take the standing `leftover`
        (`kept`, `replaced`; None leaves them `listed`); the manifest's revision moves on.
        A key met twice keeps its later place; `seq` is each row's place in `rows`. One
        transaction, in bounded memory (`_plan.py`)."""
        batch = await self._read(reads.batch_counters)
        generation, revision = batch[0] + 1, batch[1] + 1
        stop = threading.Event()

        def job(db: sqlite3.Connection) -> tuple[int, int]:
            return self._plan(
                db, rows, generation=generation, revision=revision, leftover=leftover,
                max_attempts=max_attempts, now=self._now, commit=self._commit, stop=stop,
            )  # fmt: skip

        try:
            added, total = await self._writer.call(job, transition=False)
        except sqlite3.Error as exc:
            raise database_error(exc, self.path) or exc from exc
        except BaseException:
            stop.set()  # cancelled: the plan rolls back at its next rows
            raise
        removed = await self._read(
            reads.scalar, "SELECT COUNT(*) FROM cells WHERE generation < ?", generation
        )
        return PlanResult(added=added, kept=total - added, removed=removed)

    async def compare(self, rows: Iterable[PlanRow]) -> Comparison:
        """A manifest's cells (`rows`) against the batch's: new, known, left behind. Reads
        only (`zbatch plan`, and `zbatch run` before it plans)."""
        return await self._read(planning.compare, rows)

    async def plan_is_current(self, fingerprint: str) -> PlanResult | None:
        """What the last complete plan recorded, if it planned `fingerprint` at the current
        generation (nothing moved cells since: no retry, no cancel); else None."""
        return await self._read(planning.plan_is_current, fingerprint)

    async def focus(self, keys: Sequence[str]) -> None:
        """Only the cells `keys` stay submittable, in a generation of their own
        (`zbatch run --sample`); the next full plan lists every cell again."""
        await self._tx(planning.focus, keys)

    async def set_plan_fingerprint(self, fingerprint: str) -> None:
        """Record that a plan of `fingerprint` completed, at the generation it made."""
        await self._tx(planning.set_plan_fingerprint, fingerprint)

    # -- the run's transitions (`_transitions.py`) ---------------------------------------------

    async def reserve(self, attempt_id: int, estimate_buzz: int) -> bool:
        """planned -> submitting with `estimate_buzz` reserved, if the cap allows (else False)."""
        return await self._tx(transitions.reserve, attempt_id, estimate_buzz)

    async def reserve_many(self, items: Sequence[tuple[int, int]]) -> list[int]:
        """`reserve` each (attempt id, estimate) in order in ONE transaction; the ids
        reserved, in order: the first the cap refuses ends them (it and the rest stay
        planned). The submitter's way: one trip and one commit for a batch of intents."""
        return await self._tx(transitions.reserve_many, items)

    async def mark_running(self, attempt_id: int, workflow_id: str, charged_buzz: int) -> None:
        """submitting -> running: the reservation becomes what was charged."""
        await self._tx(transitions.mark_running, attempt_id, workflow_id, charged_buzz)

    async def mark_rejected(self, attempt_id: int, reason: str) -> None:
        """submitting -> rejected (the API refused the input): the reservation released."""
        await self.drop_intent(attempt_id, AttemptState.REJECTED, reason)

    async def release(self, attempt_id: int) -> None:
        """submitting -> planned: undo an intent the API never saw (no request was sent)."""
        await self.drop_intent(attempt_id, AttemptState.PLANNED, None)

    async def drop_intent(self, attempt_id: int, to: AttemptState, reason: str | None) -> None:
        """submitting -> `to` with the reservation released: the service charged nothing."""
        await self._tx(transitions.drop_intent, attempt_id, to, reason)

    async def mark_finished(
        self,
        attempt_id: int,
        outcome: AttemptState,
        *,
        charged_buzz: int,
        images: Sequence[ImageOutcome] = (),
        reason: str | None = None,
        running: tuple[str, int] | None = None,
    ) -> int | None:
        """-> `outcome`: a terminal workflow, its final charge, its images; the id of the next
        attempt when a failed or expired one has attempts left. With `running` (workflow id,
        charge) a submitting attempt is first recorded running, in the same transaction (the
        submit's answer was already terminal)."""
        return await self._tx(
            transitions.mark_finished, attempt_id, outcome, charged_buzz, images, reason, running
        )

    async def mark_downloaded(
        self,
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
        await self._tx(
            transitions.mark_downloaded, attempt_id, index,
            path=path, sha256=sha256, size_bytes=size_bytes, width=width, height=height,
        )  # fmt: skip

    async def mark_lost(self, attempt_id: int, index: int, reason: str) -> None:
        """image pending -> lost: the service no longer has it (or never delivered it)."""
        await self._tx(transitions.mark_lost, attempt_id, index, reason)

    # -- the operations' transitions (`_ops.py`) ---------------------------------------------

    async def cancel_batch(self, reason: str) -> int:
        """every planned -> canceled, and the batch stops submitting; how many. Idempotent."""
        return await self._tx(ops.cancel_batch, reason)

    async def withdraw(self, attempt_id: int, reason: str) -> None:
        """submitting -> canceled: an intent the service never turned into a workflow.

        Only for `zbatch cancel`, holding the batch lock, after the batch's tag showed no
        workflow with the attempt's externalId. The reservation is released.
        """
        await self.drop_intent(attempt_id, AttemptState.CANCELED, reason)

    async def retry_cells(
        self,
        *,
        states: Collection[str],
        cells: Sequence[str] = (),
        attempts: int = 1,
        cap_buzz: int | None = None,
    ) -> RetryPlan:
        """-> planned (attempt n+1) for the chosen cells, and only they become submittable."""
        return await self._tx(ops.retry_cells, states, cells, attempts, cap_buzz)

    async def adopt_workflow(
        self, cell_key: str, attempt: int, workflow_id: str, charged_buzz: int
    ) -> Adoption:
        """Record a workflow found on the service as attempt `attempt` of `cell_key`: running."""
        return await self._tx(ops.adopt_workflow, cell_key, attempt, workflow_id, charged_buzz)

    async def mark_image_repaired(self, attempt_id: int, index: int, sha256: str) -> None:
        """image downloaded -> downloaded: the file was damaged and is whole again."""
        await self._tx(ops.mark_image_repaired, attempt_id, index, sha256)

    async def mark_image_missing(self, attempt_id: int, index: int, reason: str) -> None:
        """image downloaded -> lost: the file is gone or damaged and the service lost it too."""
        await self._tx(ops.mark_image_missing, attempt_id, index, reason)

    # -- reads (`_reads.py`) -----------------------------------------------------------------

    async def next_planned(self, limit: int) -> list[Attempt]:
        """Up to `limit` planned attempts of cells in the current manifest, in grid order."""
        return await self._read(reads.next_planned, limit)

    async def active(self) -> list[Attempt]:
        """Attempts the API may know of and that are not finished: submitting and running."""
        return await self._read(reads.active)

    async def attempt(self, attempt_id: int) -> Attempt:
        """The attempt `attempt_id`; StoreError when there is none."""
        return await self._read(reads.attempt, attempt_id)

    async def pending_images(
        self, limit: int, *, skip: Container[tuple[int, int]] = ()
    ) -> list[PendingImage]:
        """Up to `limit` images to download, but those in `skip` (attempt id, index); a
        worker's own only (those of attempts it owns)."""
        owner = None if self.fence is None else self.fence.worker
        return await self._read(reads.pending_images, limit, skip, owner)

    async def budget(self) -> Budget:
        """The cap, what is committed, and how much of it is charged vs only reserved."""
        return await self._read(reads.budget)

    async def counts(self) -> dict[str, int]:
        """Attempts by state and images by state (`image:<state>`)."""
        return await self._read(reads.counts)

    async def unsubmitted(self) -> tuple[int, int]:
        """Planned attempts of current cells and the sum of their estimates (Buzz)."""
        return await self._read(reads.unsubmitted)

    async def canceled_at(self) -> str | None:
        """When `zbatch cancel` stopped the batch (ISO 8601, UTC), or None."""
        return await self._read(reads.canceled_at)

    async def cell_total(self) -> int:
        """How many cells the record holds."""
        return await self._read(reads.scalar, "SELECT COUNT(*) FROM cells")

    async def cell_estimate(self, cell_key: str) -> int | None:
        """The cell's estimated price in Buzz, or None when the batch has no such cell."""
        return await self._read(reads.cell_estimate, cell_key)

    async def downloaded_images(self, after: tuple[int, int], limit: int) -> list[StoredImage]:
        """Up to `limit` downloaded images after `(attempt id, index)`, in that order."""
        return await self._read(reads.downloaded_images, after, limit)

    async def batch_info(self) -> BatchInfo:
        """The batch row: its name, API tag, cap and when it was created."""
        return await self._read(reads.batch_info)

    async def cell_counts(self) -> dict[str, int]:
        """Cells by the state of their latest attempt: a retried cell counts once, as its retry."""
        return await self._read(reads.cell_counts)

    async def failure_reasons(self, limit: int) -> list[FailureReason]:
        """The most frequent reasons cells (by latest attempt) ended without success."""
        return await self._read(reads.failure_reasons, limit)

    async def last_event_at(self) -> str | None:
        """When the last transition was recorded (ISO 8601, UTC), or None before any."""
        return await self._read(reads.last_event_at)

    async def var_names(self) -> list[str]:
        """Every template variable name any cell has, sorted."""
        return await self._read(reads.var_names)

    async def activity(self) -> Activity:
        """Refunds and the first and last event, from the events table."""
        return await self._read(reads.activity)

    async def gallery_cells(self, *, all_cells: bool = False) -> list[GalleryCell]:
        """Cells of the current manifest and any older cell with images, in grid order;
        with `all_cells`, also those a `--replace` left out."""
        return await self._read(reads.gallery_cells, all_cells)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Store]:
        """A read-only store of its own on the same database file, closed on exit.

        Long reads (`dataset_images`) hold their connection for the whole iteration; on a
        reader of their own they never delay a running engine's transitions, and they see
        one consistent snapshot.
        """
        file = await self._read(reads.database_file)
        if file is None:
            raise StoreError("the batch database has no file to open a reader on")
        async with await Store.open(Path(file), read_only=True) as store:
            yield store

    async def dataset_images(
        self,
        states: Sequence[str] = ("downloaded",),
        *,
        chunk: int = 2_000,
        all_cells: bool = False,
    ) -> AsyncGenerator[list[DatasetImage], None]:
        """Images in `states` with their attempt and cell, in chunks, ordered by path.

        The order (images not on disk first, by attempt and index) is stable, and it is what
        `refresh_dataset` merges its previous file by. One statement streamed `chunk` rows
        at a time, so a million images never sit in memory. It holds this connection until
        the iteration ends (close it with `contextlib.aclosing`): during a run, call it on
        `reader()`, not on the engine's store. Cells a `--replace` left out of the manifest
        are left out, unless `all_cells`.
        """
        sql = reads.dataset_images_sql(states, all_cells=all_cells)
        cur: sqlite3.Cursor = await self._read(lambda db: db.execute(sql, tuple(states)))
        try:
            while rows := await self._read(lambda _: cur.fetchmany(chunk)):
                yield reads.dataset_images(rows)
        finally:
            with anyio.CancelScope(shield=True):
                await self._read(lambda _: cur.close())

    # -- the run settings (`_settings.py`) -----------------------------------------------------

    async def save_run_settings(self, settings: RunSettings) -> None:
        """Record the batch's captions, limits and attempts (`zbatch run`, when it plans)."""
        await self._tx(save_run_settings, settings)

    async def run_settings(self) -> RunSettings | None:
        """The batch's recorded run settings; None for a record made before they were kept."""
        return await self._read(read_run_settings)
