"""The store's operations on a batch after (or between) runs: retry, cancel, verify, adopt.

Part of the store (mixed into `Store`, like `store_reads.py`): these are transitions and
reads only `zbatch retry`, `zbatch cancel`, `zbatch verify` and `zbatch run --adopt` use.
Every transition is one `BEGIN IMMEDIATE` transaction with a guard on the current state and
an `events` row, like those of `store.py`. docs/operations.md says who calls each one.

`batch.generation` decides which cells may be submitted (`next_planned` hands out only
planned attempts of cells in the current generation). `zbatch run` puts the manifest's
cells there; `retry_cells` moves only the chosen cells into a new generation; `cancel_batch`
opens an empty one, so nothing is submitted until a retry lifts it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiosqlite

from runner.errors import StoreError
from runner.store._reads import StoreReads
from runner.store._rows import AttemptState, external_id_for

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


@dataclass(frozen=True)
class RetryChoice:
    """A cell `retry_cells` gave a new attempt: its key, the new number, what it was."""

    cell_key: str
    attempt: int
    was: str  # failed, expired, lost, canceled, blocked, rejected


@dataclass(frozen=True)
class RetryPlan:
    """What `retry_cells` did: the cells retried and the named cells it would not touch."""

    chosen: list[RetryChoice]
    skipped: dict[str, str] = field(default_factory=dict)  # cell key -> why not
    canceled_lifted: bool = False


@dataclass(frozen=True)
class Adoption:
    """What `adopt_workflow` did with one workflow found on the service.

    `status`: `adopted` (recorded now, running), `known` (already recorded with this
    workflow id), `conflict` (the attempt is recorded otherwise; nothing changed), `unknown`
    (no such cell in the batch; nothing changed).
    """

    status: str
    attempt_id: int | None = None
    detail: str | None = None


@dataclass(frozen=True)
class StoredImage:
    """A downloaded image as recorded: where it is and what its bytes must hash to."""

    attempt_id: int
    index: int
    cell_key: str
    path: str
    sha256: str
    size_bytes: int
    blob_id: str | None
    workflow_id: str | None
    request: dict[str, Any]


class StoreOps(StoreReads):
    """Transitions and reads of the operations on a batch (mixed into `Store`)."""

    _now: Callable[[], str]

    if TYPE_CHECKING:  # defined by Store (store.py)

        async def _tx(self, fn: Callable[[aiosqlite.Connection], Any]) -> Any: ...

        async def _event(
            self,
            db: aiosqlite.Connection,
            attempt_id: int | None,
            from_state: str | None,
            to_state: str,
            buzz: int | None = None,
            detail: str | None = None,
        ) -> None: ...

        async def _move(
            self,
            db: aiosqlite.Connection,
            attempt_id: int,
            expected: Sequence[AttemptState],
            to: AttemptState,
            sets: str = "",
            params: Sequence[Any] = (),
        ) -> None: ...

        async def _reserved(self, db: aiosqlite.Connection, attempt_id: int) -> int: ...

        async def _commit_delta(self, db: aiosqlite.Connection, delta_buzz: int) -> None: ...

        async def drop_intent(
            self, attempt_id: int, to: AttemptState, reason: str | None
        ) -> None: ...

    # -- reads --------------------------------------------------------------------------

    async def canceled_at(self) -> str | None:
        """When `zbatch cancel` stopped the batch (ISO 8601, UTC), or None."""
        async with (
            self._lock,
            self._db.execute("SELECT canceled_at FROM batch WHERE id = 1") as cur,
        ):
            row = await cur.fetchone()
        return None if row is None or row[0] is None else str(row[0])

    async def cell_total(self) -> int:
        """How many cells the record holds."""
        return await self._scalar("SELECT COUNT(*) FROM cells")

    async def cell_estimate(self, cell_key: str) -> int | None:
        """The cell's estimated price in Buzz, or None when the batch has no such cell."""
        async with (
            self._lock,
            self._db.execute("SELECT estimate_buzz FROM cells WHERE key = ?", (cell_key,)) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def downloaded_images(self, after: tuple[int, int], limit: int) -> list[StoredImage]:
        """Up to `limit` downloaded images after `(attempt id, index)`, in that order.

        Only the current file of each path: an image a later attempt of the same cell
        downloaded again (a retry of lost images) replaces the older row's claim on it.
        """
        async with (
            self._lock,
            self._db.execute(
                "SELECT i.attempt_id, i.idx, i.path, i.sha256, i.size_bytes, i.blob_id,"
                " a.cell_key, a.workflow_id, c.request"
                " FROM images i JOIN attempts a ON a.id = i.attempt_id"
                " JOIN cells c ON c.key = a.cell_key"
                " WHERE i.state = 'downloaded' AND (i.attempt_id > ? OR"
                " (i.attempt_id = ? AND i.idx > ?)) AND NOT EXISTS (SELECT 1 FROM attempts b"
                " JOIN images j ON j.attempt_id = b.id WHERE b.cell_key = a.cell_key"
                " AND b.attempt > a.attempt AND j.idx = i.idx AND j.state = 'downloaded')"
                " ORDER BY i.attempt_id, i.idx LIMIT ?",
                (after[0], after[0], after[1], limit),
            ) as cur,
        ):
            rows = await cur.fetchall()
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

    # -- cancel -------------------------------------------------------------------------

    async def cancel_batch(self, reason: str) -> int:
        """Stop the batch from submitting: flag it, and cancel every planned attempt.

        One transaction: `batch.canceled_at` is set (kept if already set), the generation
        moves to an empty one (so a retry planned later by a finishing workflow is not
        handed out either), and every `planned` attempt becomes `canceled` with no charge.
        Returns how many attempts it canceled. Idempotent.
        """

        async def fn(db: aiosqlite.Connection) -> int:
            now = self._now()
            cur = await db.execute(
                "UPDATE batch SET canceled_at = COALESCE(canceled_at, ?),"
                " generation = generation + 1 WHERE id = 1",
                (now,),
            )
            if cur.rowcount != 1:
                raise StoreError("the database holds no batch yet: nothing to cancel")
            await db.execute(
                "INSERT INTO events (at, attempt_id, from_state, to_state, buzz, detail)"
                " SELECT ?, id, 'planned', 'canceled', 0, ? FROM attempts"
                " WHERE state = 'planned'",
                (now, reason),
            )
            cur = await db.execute(
                "UPDATE attempts SET state = 'canceled', reason = ?, updated_at = ?"
                " WHERE state = 'planned'",
                (reason, now),
            )
            await self._event(db, None, None, "batch:canceled", None, reason)
            return int(cur.rowcount)

        result: int = await self._tx(fn)
        return result

    async def withdraw(self, attempt_id: int, reason: str) -> None:
        """submitting -> canceled: an intent the service never turned into a workflow.

        Only for `zbatch cancel`, holding the batch lock, after the batch's tag showed no
        workflow with the attempt's externalId. The reservation is released.
        """
        await self.drop_intent(attempt_id, AttemptState.CANCELED, reason)

    # -- retry --------------------------------------------------------------------------

    async def retry_cells(
        self,
        *,
        states: Collection[str],
        cells: Sequence[str] = (),
        attempts: int = 1,
        cap_buzz: int | None = None,
    ) -> RetryPlan:
        """Give the chosen cells a new planned attempt each, and make only them submittable.

        Chosen: with `cells`, those cells (and, when `states` is not empty, only those in
        one of them), blocked and rejected included; without, every cell whose latest
        attempt is in `states` (`lost`: succeeded with a lost image). Never a cell still
        open or succeeded with every image delivered. One transaction: the new attempts
        (number n+1, a new externalId), the cells' move into a new generation, their
        `max_attempts` (n + `attempts`), the cancel flag lifted, and `cap_buzz` if given.
        Nothing changes when nothing is chosen.
        """
        unknown = set(states) - set(RETRY_STATES) - (set(NAMED_ONLY_STATES) if cells else set())
        if unknown:
            allowed = ", ".join(RETRY_STATES)
            raise StoreError(f"cannot retry state(s) {', '.join(sorted(unknown))} ({allowed})")

        async def fn(db: aiosqlite.Connection) -> RetryPlan:
            rows, skipped = await self._retry_candidates(db, states, cells)
            if not rows:
                return RetryPlan(chosen=[], skipped=skipped)
            async with db.execute("SELECT generation, canceled_at FROM batch WHERE id = 1") as cur:
                batch = await cur.fetchone()
            assert batch is not None  # rows exist, so the batch does
            generation = int(batch[0]) + 1
            chosen: list[RetryChoice] = []
            for key, last, kind in rows:
                number = int(last) + 1
                cur = await db.execute(
                    "INSERT INTO attempts (cell_key, attempt, external_id, state, updated_at)"
                    " VALUES (?, ?, ?, 'planned', ?)",
                    (key, number, external_id_for(key, number), self._now()),
                )
                await self._event(db, cur.lastrowid, None, "planned", None, f"retry of {kind}")
                await db.execute(
                    "UPDATE cells SET generation = ?, max_attempts = ? WHERE key = ?",
                    (generation, number - 1 + attempts, key),
                )
                chosen.append(RetryChoice(key, number, kind))
            await db.execute(
                "UPDATE batch SET generation = ?, canceled_at = NULL,"
                " cap_buzz = COALESCE(?, cap_buzz) WHERE id = 1",
                (generation, cap_buzz),
            )
            await self._event(db, None, None, "batch:retry", cap_buzz, f"{len(chosen)} cells")
            return RetryPlan(chosen=chosen, skipped=skipped, canceled_lifted=batch[1] is not None)

        result: RetryPlan = await self._tx(fn)
        return result

    async def _retry_candidates(
        self, db: aiosqlite.Connection, states: Collection[str], cells: Sequence[str]
    ) -> tuple[list[tuple[str, int, str]], dict[str, str]]:
        if not cells:
            marks = ",".join("?" for _ in states) or "NULL"
            async with db.execute(
                f"SELECT * FROM ({_LATEST}) WHERE kind IN ({marks}) ORDER BY key", tuple(states)
            ) as cur:
                return [(r[0], int(r[1]), r[2]) for r in await cur.fetchall()], {}
        rows: list[tuple[str, int, str]] = []
        skipped: dict[str, str] = {}
        for key in dict.fromkeys(cells):
            async with db.execute(f"{_LATEST} AND c.key = ?", (key,)) as cur:
                row = await cur.fetchone()
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

    # -- adopt --------------------------------------------------------------------------

    async def adopt_workflow(
        self, cell_key: str, attempt: int, workflow_id: str, charged_buzz: int
    ) -> Adoption:
        """Record a workflow found on the service as attempt `attempt` of `cell_key`: running.

        A missing attempt row is inserted; a `planned` one (what `plan` made) or a
        `submitting` one (an intent whose answer was lost) moves to `running`. The charge
        enters the ledger (`committed += charged - reserved`): adoption never checks the cap,
        the Buzz is already spent. Planned attempts of the cell numbered below it never
        reached the service and are canceled. Nothing changes for a known or conflicting one.
        """

        async def fn(db: aiosqlite.Connection) -> Adoption:
            async with db.execute("SELECT 1 FROM cells WHERE key = ?", (cell_key,)) as cur:
                if await cur.fetchone() is None:
                    return Adoption("unknown", detail="no such cell in this batch")
            async with db.execute(
                "SELECT id, state, workflow_id FROM attempts WHERE cell_key = ? AND attempt = ?",
                (cell_key, attempt),
            ) as cur:
                row = await cur.fetchone()
            detail = f"adopted {workflow_id}"
            if row is None:
                cur = await db.execute(
                    "INSERT INTO attempts (cell_key, attempt, external_id, state, charged_buzz,"
                    " workflow_id, updated_at) VALUES (?, ?, ?, 'running', ?, ?, ?)",
                    (cell_key, attempt, external_id_for(cell_key, attempt), charged_buzz,
                     workflow_id, self._now()),
                )  # fmt: skip
                attempt_id = int(cur.lastrowid or 0)
                await self._commit_delta(db, charged_buzz)
                await self._event(db, attempt_id, None, "running", charged_buzz, detail)
            elif row["state"] in ("planned", "submitting"):
                attempt_id = int(row["id"])
                reserved = await self._reserved(db, attempt_id)
                await self._move(
                    db, attempt_id, [AttemptState(row["state"])], AttemptState.RUNNING,
                    ", workflow_id = ?, reserved_buzz = 0, charged_buzz = ?",
                    (workflow_id, charged_buzz),
                )  # fmt: skip
                await self._commit_delta(db, charged_buzz - reserved)
                await self._event(db, attempt_id, row["state"], "running", charged_buzz, detail)
            elif row["workflow_id"] == workflow_id:
                return Adoption("known", int(row["id"]))
            else:
                found = row["workflow_id"] or "no workflow"
                return Adoption("conflict", int(row["id"]), f"recorded {row['state']}, {found}")
            await self._supersede(db, cell_key, attempt)
            return Adoption("adopted", attempt_id)

        result: Adoption = await self._tx(fn)
        return result

    async def _supersede(self, db: aiosqlite.Connection, cell_key: str, attempt: int) -> None:
        reason = f"superseded by attempt {attempt}, adopted from the service"
        now = self._now()
        where = " FROM attempts WHERE cell_key = ? AND attempt < ? AND state = 'planned'"
        await db.execute(
            "INSERT INTO events (at, attempt_id, from_state, to_state, buzz, detail)"
            " SELECT ?, id, 'planned', 'canceled', 0, ?" + where,
            (now, reason, cell_key, attempt),
        )
        await db.execute(
            "UPDATE attempts SET state = 'canceled', reason = ?, updated_at = ?"
            " WHERE cell_key = ? AND attempt < ? AND state = 'planned'",
            (reason, now, cell_key, attempt),
        )

    # -- verify -------------------------------------------------------------------------

    async def mark_image_repaired(self, attempt_id: int, index: int, sha256: str) -> None:
        """downloaded -> downloaded: the file was damaged and is whole again (same sha256)."""
        await self._image_op(
            attempt_id, index, "image:repaired", "", (), " AND sha256 = ?", (sha256,)
        )

    async def mark_image_missing(self, attempt_id: int, index: int, reason: str) -> None:
        """downloaded -> lost: the file is gone or damaged and the service no longer has it."""
        await self._image_op(
            attempt_id, index, "image:lost", ", state = 'lost', reason = ?", (reason,), "", ()
        )

    async def _image_op(
        self,
        attempt_id: int,
        index: int,
        to: str,
        sets: str,
        params: Sequence[Any],
        guard: str,
        guard_params: Sequence[Any],
    ) -> None:
        async def fn(db: aiosqlite.Connection) -> None:
            cur = await db.execute(
                f"UPDATE images SET updated_at = ?{sets}"
                f" WHERE attempt_id = ? AND idx = ? AND state = 'downloaded'{guard}",
                (self._now(), *params, attempt_id, index, *guard_params),
            )
            if cur.rowcount != 1:
                raise StoreError(f"image {attempt_id}/{index}: not downloaded, cannot become {to}")
            await self._event(db, attempt_id, "downloaded", to, None, str(index))

        await self._tx(fn)
