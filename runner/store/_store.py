"""The batch database: SQLite schema, migrations, the budget ledger and every state transition.

The database is the single source of truth of a batch. Each transition is one short
`BEGIN IMMEDIATE` transaction with a guard on the current state, so a crash between any two
transitions leaves a state the next `zbatch run` knows how to continue (docs/states.md).
WAL with `synchronous=FULL`: a committed intent is on disk before its network call is made.

```
attempt:  planned -> submitting -> running -> succeeded | failed | expired | canceled
                         |   \\-> rejected (4xx: nothing spent)
                         \\-----> blocked  (moderation)      (also from running)
image:    pending -> downloaded | lost
```

Budget: `batch.committed_buzz` = reservations of `submitting` attempts + charges of every
attempt past it. A reservation is taken only while `committed + estimate <= cap`, in the
same transaction that records the intent, so the cap holds with any concurrency and
across crashes. Only this module speaks SQL; the SQL stays portable to PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite
import anyio
import structlog

from runner.disk import _faults as local_faults
from runner.disk._atomic import fsync_dir
from runner.disk._faults import damaged, database_error, disk_error
from runner.disk._lock import BatchLock
from runner.disk._private import create_private
from runner.errors import DatabaseDamaged, LocalDiskError, StoreError
from runner.store._migrations import MIGRATIONS, SCHEMA_VERSION, newer_schema
from runner.store._ops import StoreOps  # operations: retry, cancel, verify, adopt
from runner.store._rows import (
    RETRYABLE_OUTCOMES,
    AttemptState,
    CellRow,
    ImageOutcome,
    ImageState,
    PlanResult,
    external_id_for,
)
from runner.store._settings import RunSettings, read_run_settings, save_run_settings

log = structlog.get_logger(__name__)
# records.external_id_for(key, 1) in SQL, for the attempts a plan inserts in bulk
_EXTERNAL_ID_SQL = "'zb-' || substr(key, 1, 48) || '-a1'"
PLAN_CHUNK = 100_000  # rows merged into the record at a time, in key order
PLAN_HANDOFF = 10_000  # rows handed from the expansion to SQLite's thread at a time
PLAN_AHEAD = 5  # hand-offs the expansion may run ahead while a chunk is merged

# One cell as `Store.plan_rows` records it: key, replica, model, the request and the vars as
# JSON text (sorted keys, ASCII: `plan_row`), the estimated price in Buzz.
PlanRow = tuple[str, int, str, str, str, int]
_ROW_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",  # an intent is on disk before its network call
    "PRAGMA foreign_keys=ON",
)  # and PRAGMA busy_timeout, first of all (`local_faults.BUSY_TIMEOUT_MS`)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def plan_row(cell: CellRow) -> PlanRow:
    """`cell` as `Store.plan_rows` takes it."""
    return (
        cell.key,
        cell.replica,
        cell.model,
        _ROW_JSON.encode(cell.request),
        _ROW_JSON.encode(cell.vars),
        cell.estimate_buzz,
    )


_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100


def header_problem(path: Path) -> str | None:
    """What is wrong with the database file at `path` by its 100-byte header, or None.

    Cheap (one read), for every open: a file that is not SQLite, or that is shorter than
    the page count its header records (truncated by a copy, a full disk, a bad sync).
    Missing or empty is a new database. With a write-ahead log beside it the file may
    lawfully be shorter (pages not yet checkpointed), so only its magic is checked then.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return None
        with path.open("rb") as handle:
            header = handle.read(_HEADER_BYTES)
    except FileNotFoundError:
        return None
    if not header.startswith(_SQLITE_MAGIC):
        if _SQLITE_MAGIC.startswith(header):  # shorter than the magic, and a prefix of it
            return f"truncated to {size} bytes"
        return f"not an SQLite database: it starts with {header[:16]!r}"
    if len(header) < _HEADER_BYTES:
        return f"truncated to {size} bytes"
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid = header[24:28] == header[92:96]  # the page count is trusted only then
    if valid and pages * page_size > size:
        return f"truncated: {size} bytes of the {pages * page_size} its header records"
    return None


def set_aside(path: Path) -> Path:
    """Rename a damaged database and its -wal / -shm to `<name>.damaged-<UTC time>`; return
    the new name. Kept, never deleted: whatever can be read from it stays readable."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("-wal", "-shm", ""):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(aside.with_name(aside.name + suffix))
    fsync_dir(path.parent)
    return aside


def _disk_error(exc: OSError, path: Path, doing: str) -> LocalDiskError | OSError:
    return disk_error(exc, path.parent, doing) or exc


async def _run(db: aiosqlite.Connection, sql: str) -> list[Any]:
    async with db.execute(sql) as cur:
        return list(await cur.fetchall())


class Store(StoreOps):  # StoreOps extends StoreReads
    """The batch database. Open with `await Store.open(path)`; use as an async context manager."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        lock: BatchLock | None,
        now: Callable[[], str],
        path: Path | None = None,
    ) -> None:
        self._db = db
        self._path = path
        self._batch_lock = lock
        self._lock = anyio.Lock()  # one connection: one transaction or read at a time
        self._now = now
        self.set_aside: Path | None = None  # where a damaged database was moved (--adopt)
        self.read_only = False  # a reader (`open(read_only=True)`): a write is a bug here

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
        its own error (runner/local_faults.py): `DatabaseDamaged` (not SQLite, truncated,
        malformed), `NewerSchema`, `DatabaseLocked` (another program held SQLite's lock past
        busy_timeout), `BatchInUse`, `DiskFull` / `ReadOnlyDisk`. With `set_aside_damaged`
        (`zbatch run --adopt`) the whole database is checked (`PRAGMA quick_check`) and a
        damaged one is renamed aside, never deleted (`set_aside`), and a new one is made.
        """
        if read_only:
            return await cls._open_read_only(path, now)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _disk_error(exc, path, "creating the output folder") from exc
        batch_lock = BatchLock(path) if lock else None
        if batch_lock is not None:
            batch_lock.acquire()
        try:
            problem = await anyio.to_thread.run_sync(header_problem, path)
            if problem is None:
                try:
                    return await cls._connect(path, batch_lock, now, check=set_aside_damaged)
                except DatabaseDamaged as exc:
                    if not set_aside_damaged:
                        raise
                    problem = exc.detail
            elif not set_aside_damaged:
                raise damaged(str(path), problem)
            aside = await anyio.to_thread.run_sync(set_aside, path)
            log.warning("damaged_database_set_aside", problem=problem, moved_to=str(aside))
            store = await cls._connect(path, batch_lock, now, check=False)
            store.set_aside = aside
        except BaseException:
            if batch_lock is not None:
                batch_lock.release()
            raise
        return store

    @classmethod
    async def _connect(
        cls, path: Path, batch_lock: BatchLock | None, now: Callable[[], str], *, check: bool
    ) -> Store:
        """Connect, refuse a newer schema before changing anything, set the pragmas, migrate."""
        db: aiosqlite.Connection | None = None
        try:
            try:
                create_private(path)  # 0600; SQLite gives -wal and -shm the same mode
            except OSError as exc:
                raise _disk_error(exc, path, f"creating {path.name}") from exc
            db = await aiosqlite.connect(path, isolation_level=None)
            db.row_factory = aiosqlite.Row
            # First only reads: the schema version (a newer zbatch's file is left untouched)
            # and, when asked, every page.
            await _run(db, f"PRAGMA busy_timeout={local_faults.BUSY_TIMEOUT_MS}")
            version = int((await _run(db, "PRAGMA user_version"))[0][0])
            if version > SCHEMA_VERSION:
                raise newer_schema(path, version)
            if check:
                verdict = [str(r[0]) for r in await _run(db, "PRAGMA quick_check(5)")]
                if verdict != ["ok"]:
                    raise damaged(str(path), "; ".join(verdict))
            for pragma in _PRAGMAS:
                # Closed at once: `journal_mode` answers a row, and a statement left open
                # until the garbage collector finalizes it counts as a write in progress,
                # which makes a later COMMIT fail ("SQL statements in progress").
                await _run(db, pragma)
            store = cls(db, batch_lock, now, path)
            await store._migrate()
        except sqlite3.Error as exc:
            if db is not None:
                await db.close()
            translated = database_error(exc, path)
            if translated is None:
                raise
            raise translated from exc
        except BaseException:
            if db is not None:
                await db.close()
            raise
        return store

    @classmethod
    async def _open_read_only(cls, path: Path, now: Callable[[], str]) -> Store:
        apath = anyio.Path(path)
        if not await apath.is_file():
            raise StoreError(f"{path} does not exist")
        uri = (await apath.resolve()).as_uri() + "?mode=ro"
        db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        try:
            db.row_factory = aiosqlite.Row
            async with db.execute(f"PRAGMA busy_timeout={local_faults.BUSY_TIMEOUT_MS}") as cur:
                await cur.fetchall()
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise StoreError(f"{path} is not a zbatch batch database ({exc})") from exc
        except BaseException:
            await db.close()
            raise
        version = int(row[0]) if row else 0
        if version != SCHEMA_VERSION:
            await db.close()
            if version == 0:
                raise StoreError(f"{path} is not a zbatch batch database (no zbatch schema)")
            if version > SCHEMA_VERSION:
                raise newer_schema(path, version)
            raise StoreError(
                f"{path} has schema version {version}, this zbatch reads {SCHEMA_VERSION}:"
                " run `zbatch run` to migrate"
            )
        reader = cls(db, None, now, path)
        reader.read_only = True
        return reader

    async def close(self) -> None:
        """Close the connection and release the batch lock, even when the caller is cancelled."""
        try:
            with anyio.move_on_after(10, shield=True):
                await self._db.close()
        finally:
            if self._batch_lock is not None:
                self._batch_lock.release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _migrate(self) -> None:
        async with self._lock, self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:  # another zbatch upgraded it since _connect looked
            raise newer_schema(self._path or Path("batch.sqlite"), version)
        for number in range(version, SCHEMA_VERSION):
            # executescript commits whatever is open first, so the script is its own
            # transaction: the schema change and the version bump land together or not at all.
            bump = f"PRAGMA user_version = {number + 1};"
            script = f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]}\n{bump}\nCOMMIT;"
            try:
                await self._db.executescript(script)
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    # -- transactions ----------------------------------------------------------------------

    async def _tx(self, fn: Callable[[aiosqlite.Connection], Any]) -> Any:
        """Run `fn(db)` inside one BEGIN IMMEDIATE transaction; roll back on any error.

        Shielded from cancellation: a transition that has begun commits or rolls back whole,
        even when Ctrl-C cancels the task that asked for it. A failure of the machine (the
        disk full at COMMIT, another program's lock past busy_timeout, a damaged page)
        leaves nothing of the transaction and is raised as its zbatch error
        (runner/local_faults.py): a caller that records an intent before a network call
        never makes that call unless the intent is on disk.
        """
        with anyio.CancelScope(shield=True):
            async with self._lock:
                try:
                    await self._db.execute("BEGIN IMMEDIATE")
                    try:
                        result = await fn(self._db)
                        await self._commit()
                    except BaseException:
                        if self._db.in_transaction:  # SQLite may have rolled back already
                            await self._db.execute("ROLLBACK")
                        raise
                except sqlite3.Error as exc:
                    translated = None if self.read_only else database_error(exc, self.path)
                    if translated is None:
                        raise
                    raise translated from exc
                return result

    async def _commit(self) -> None:
        """COMMIT: the write boundary of the database (tests inject SQLITE_FULL here)."""
        await self._db.execute("COMMIT")

    @property
    def path(self) -> Path | None:
        """The database file (None for an in-memory one)."""
        return self._path

    async def _event(
        self,
        db: aiosqlite.Connection,
        attempt_id: int | None,
        from_state: str | None,
        to_state: str,
        buzz: int | None = None,
        detail: str | None = None,
    ) -> None:
        await db.execute(
            "INSERT INTO events (at, attempt_id, from_state, to_state, buzz, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (self._now(), attempt_id, from_state, to_state, buzz, detail),
        )

    async def _move(
        self,
        db: aiosqlite.Connection,
        attempt_id: int,
        expected: Sequence[AttemptState],
        to: AttemptState,
        sets: str = "",
        params: Sequence[Any] = (),
    ) -> None:
        """Guarded transition: raise StoreError unless the attempt is in one of `expected`."""
        marks = ",".join("?" for _ in expected)
        cur = await db.execute(
            f"UPDATE attempts SET state = ?, updated_at = ?{sets}"
            f" WHERE id = ? AND state IN ({marks})",
            (to.value, self._now(), *params, attempt_id, *(s.value for s in expected)),
        )
        if cur.rowcount != 1:
            async with db.execute("SELECT state FROM attempts WHERE id = ?", (attempt_id,)) as c:
                row = await c.fetchone()
            now = row[0] if row else "missing"
            allowed = "/".join(s.value for s in expected)
            raise StoreError(f"attempt {attempt_id}: cannot move {now} -> {to} (needs {allowed})")

    # -- the batch and its cells -------------------------------------------------------

    async def init_batch(
        self, *, name: str, tag: str, cap_buzz: int, manifest_sha256: str | None = None
    ) -> None:
        """Create the batch row, or update its cap and manifest hash (the name must match)."""

        async def fn(db: aiosqlite.Connection) -> None:
            async with db.execute("SELECT name FROM batch WHERE id = 1") as cur:
                row = await cur.fetchone()
            if row is None:
                await db.execute(
                    "INSERT INTO batch (id, name, tag, cap_buzz, manifest_sha256, created_at)"
                    " VALUES (1, ?, ?, ?, ?, ?)",
                    (name, tag, cap_buzz, manifest_sha256, self._now()),
                )
            elif row[0] != name:
                raise StoreError(
                    f"this database holds batch {row[0]!r}, not {name!r}: use another `out`"
                )
            else:
                await db.execute(
                    "UPDATE batch SET cap_buzz = ?, manifest_sha256 = ? WHERE id = 1",
                    (cap_buzz, manifest_sha256),
                )

        await self._tx(fn)

    async def plan(self, cells: Iterable[CellRow], *, max_attempts: int) -> PlanResult:
        """Record the manifest's cells (idempotent): `plan_rows` of each `plan_row(cell)`."""
        return await self.plan_rows(map(plan_row, cells), max_attempts=max_attempts)

    async def plan_rows(self, rows: Iterable[PlanRow], *, max_attempts: int) -> PlanResult:
        """Record the manifest's cells (idempotent); new cells get a planned first attempt.

        Cells already known keep their record; cells no longer in the manifest keep theirs
        too, and their planned attempts are no longer handed out (`generation` moves on).
        A key met twice keeps its later place. `seq` is each row's place in `rows`.

        One transaction, in bounded memory: the rows go into a scratch table (an attached
        in-memory database) `PLAN_HANDOFF` at a time while the caller's iterator makes the
        next ones, and every `PLAN_CHUNK` rows are merged into the record in key order
        (`_merge_stage`). The keys are hashes: in grid order every insert would land on a
        random page of each key index; sorted, a merge walks each index once, and into a
        new batch it appends. One transaction writes each page to the write-ahead log once
        (a page a later merge changes again is rewritten in place), and a kill leaves
        nothing of the plan (the caller records it complete, `set_plan_fingerprint`, only
        after this returns). It commits with `synchronous=NORMAL` (never corrupts; a power
        cut may lose it whole), and FULL is back before anything else is written.
        """
        generation = await self._scalar("SELECT generation FROM batch WHERE id = 1") + 1
        async with self._lock:
            try:
                added, total = await self._plan_locked(rows, generation, max_attempts)
            except sqlite3.Error as exc:
                raise database_error(exc, self.path) or exc from exc
        removed = await self._scalar("SELECT COUNT(*) FROM cells WHERE generation < ?", generation)
        return PlanResult(added=added, kept=total - added, removed=removed)

    async def _plan_locked(
        self, rows: Iterable[PlanRow], generation: int, max_attempts: int
    ) -> tuple[int, int]:
        """`plan_rows` with the connection's lock held: (new cells, rows)."""
        db = self._db
        added = staged = merged = 0
        send, receive = anyio.create_memory_object_stream[list[PlanRow]](PLAN_AHEAD)

        async def merge() -> None:
            nonlocal added, staged, merged
            added += await self._merge_stage(
                db, first_seq=merged, rows=staged, generation=generation,
                max_attempts=max_attempts,
            )  # fmt: skip
            merged += staged
            staged = 0

        failures: list[Exception] = []  # raised as they are, not in an exception group

        async def write() -> None:
            try:
                await write_all()
            except Exception as exc:
                failures.append(exc)
                tg.cancel_scope.cancel()

        async def write_all() -> None:
            nonlocal staged
            async with receive:
                async for part in receive:
                    await db.executemany(
                        "INSERT INTO plan_stage.plan_rows"
                        " (key, replica, model, request, vars, estimate_buzz)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        part,
                    )
                    staged += len(part)
                    if staged >= PLAN_CHUNK:
                        await merge()
            if staged:
                await merge()

        await self._open_stage()
        try:
            await db.execute("BEGIN IMMEDIATE")
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                try:
                    async with send:
                        handoff = max(1, min(PLAN_HANDOFF, PLAN_CHUNK))
                        iterator = iter(rows)
                        while part := list(itertools.islice(iterator, handoff)):
                            await send.send(part)
                except Exception as exc:  # the caller's rows failed to come
                    failures.append(exc)
                    tg.cancel_scope.cancel()
            if failures:
                raise failures[0]
            await db.execute("UPDATE batch SET generation = ? WHERE id = 1", (generation,))
            with anyio.CancelScope(shield=True):
                await self._commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                if db.in_transaction:  # SQLite may have rolled back already
                    await db.execute("ROLLBACK")
            raise
        finally:
            await self._close_stage()
        return added, merged

    async def plan_is_current(self, fingerprint: str) -> PlanResult | None:
        """What the last complete plan recorded, if it planned `fingerprint` at the current
        generation (nothing moved cells since: no retry, no cancel); else None."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT plan_fingerprint, generation,"
                " (SELECT COUNT(*) FROM cells c WHERE c.generation = b.generation),"
                " (SELECT COUNT(*) FROM cells c WHERE c.generation < b.generation)"
                " FROM batch b WHERE id = 1"
            ) as cur,
        ):
            row = await cur.fetchone()
        if row is None or row[0] != f"{fingerprint}@{row[1]}":
            return None
        return PlanResult(added=0, kept=int(row[2]), removed=int(row[3]))

    async def set_plan_fingerprint(self, fingerprint: str) -> None:
        """Record that a plan of `fingerprint` completed, at the generation it made."""
        await self._tx(
            lambda db: db.execute(
                "UPDATE batch SET plan_fingerprint = ? || '@' || generation WHERE id = 1",
                (fingerprint,),
            )
        )

    async def _open_stage(self) -> None:
        """The plan's scratch table, in an in-memory database of its own (at most
        `PLAN_CHUNK` rows); the record syncs NORMAL meanwhile."""
        await self._db.execute("ATTACH DATABASE ':memory:' AS plan_stage")
        await _run(self._db, "PRAGMA synchronous=NORMAL")
        await self._db.execute(
            "CREATE TABLE plan_stage.plan_rows (key TEXT NOT NULL, replica INTEGER NOT NULL,"
            " model TEXT NOT NULL, request TEXT NOT NULL, vars TEXT NOT NULL,"
            " estimate_buzz INTEGER NOT NULL)"
        )

    async def _close_stage(self) -> None:
        """Drop the scratch database, sync FULL again, and give the write-ahead log back its
        space (the plan grew it by every page it wrote)."""
        with anyio.CancelScope(shield=True):
            await _run(self._db, "PRAGMA synchronous=FULL")
            await self._db.execute("DETACH DATABASE plan_stage")
            await _run(self._db, "PRAGMA wal_checkpoint(TRUNCATE)")

    async def _merge_stage(
        self, db: aiosqlite.Connection, *, first_seq: int, rows: int, generation: int,
        max_attempts: int,
    ) -> int:  # fmt: skip
        """Merge the `rows` staged rows (grid places `first_seq`...) into the record and empty
        the stage; return how many cells were new.

        New keys go in in key order (the latest place of a key met twice), each with attempt
        1 and its `planned` event. When some key was known already (or met twice), every
        staged key is then moved to `generation` at its latest place: the same as one
        UPDATE-else-INSERT per row, in bulk.
        """
        last_cell = await self._scalar_in(db, "SELECT COALESCE(MAX(rowid), 0) FROM cells")
        last_attempt = await self._scalar_in(db, "SELECT COALESCE(MAX(id), 0) FROM attempts")
        cur = await db.execute(
            "INSERT INTO cells (key, seq, replica, model, request, vars, estimate_buzz,"
            " max_attempts, generation) SELECT key, ? + rowid - 1, replica, model, request,"
            " vars, estimate_buzz, ?, ? FROM plan_stage.plan_rows WHERE true"
            " ORDER BY key, rowid DESC ON CONFLICT (key) DO NOTHING",
            (first_seq, max_attempts, generation),
        )
        new = cur.rowcount
        if new < rows:
            await db.execute(
                "UPDATE cells SET generation = ?, max_attempts = ?, seq = staged.seq FROM"
                " (SELECT key, ? + MAX(rowid) - 1 AS seq FROM plan_stage.plan_rows"
                " GROUP BY key) AS staged WHERE cells.key = staged.key",
                (generation, max_attempts, first_seq),
            )
        # Every cell past the last rowid, and every attempt past the last id, before this
        # merge is one it just inserted: the transaction holds the write lock.
        now = self._now()
        await db.execute(
            "INSERT INTO attempts (cell_key, attempt, external_id, state, updated_at)"
            f" SELECT key, 1, {_EXTERNAL_ID_SQL}, 'planned', ? FROM cells WHERE rowid > ?"
            " ORDER BY rowid",
            (now, last_cell),
        )
        await db.execute(
            "INSERT INTO events (at, attempt_id, from_state, to_state)"
            " SELECT ?, id, NULL, 'planned' FROM attempts WHERE id > ? ORDER BY id",
            (now, last_attempt),
        )
        await db.execute("DELETE FROM plan_stage.plan_rows")
        return new

    async def _scalar_in(self, db: aiosqlite.Connection, sql: str) -> int:
        async with db.execute(sql) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _insert_attempt(self, db: aiosqlite.Connection, cell_key: str, number: int) -> int:
        cur = await db.execute(
            "INSERT INTO attempts (cell_key, attempt, external_id, state, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (cell_key, number, external_id_for(cell_key, number), "planned", self._now()),
        )
        attempt_id = int(cur.lastrowid or 0)
        await self._event(db, attempt_id, None, AttemptState.PLANNED)
        return attempt_id

    # -- submitter ----------------------------------------------------------------------

    async def reserve(self, attempt_id: int, estimate_buzz: int) -> bool:
        """Record the intent to submit and reserve `estimate_buzz`, if the cap allows it.

        One transaction: the budget check, the reservation and planned -> submitting. Returns
        False (nothing changed) when `committed + estimate` would exceed the cap.
        """

        async def fn(db: aiosqlite.Connection) -> bool:
            cur = await db.execute(
                "UPDATE batch SET committed_buzz = committed_buzz + ?"
                " WHERE id = 1 AND committed_buzz + ? <= cap_buzz",
                (estimate_buzz, estimate_buzz),
            )
            if cur.rowcount != 1:
                return False
            await self._move(
                db, attempt_id, [AttemptState.PLANNED], AttemptState.SUBMITTING,
                ", reserved_buzz = ?", (estimate_buzz,),
            )  # fmt: skip
            await self._event(db, attempt_id, "planned", "submitting", estimate_buzz)
            return True

        result: bool = await self._tx(fn)
        return result

    async def mark_running(self, attempt_id: int, workflow_id: str, charged_buzz: int) -> None:
        """The API answered with a workflow: the reservation becomes what was charged."""

        async def fn(db: aiosqlite.Connection) -> None:
            reserved = await self._reserved(db, attempt_id)
            await self._move(
                db, attempt_id, [AttemptState.SUBMITTING], AttemptState.RUNNING,
                ", workflow_id = ?, reserved_buzz = 0, charged_buzz = ?",
                (workflow_id, charged_buzz),
            )  # fmt: skip
            await self._commit_delta(db, charged_buzz - reserved)
            await self._event(db, attempt_id, "submitting", "running", charged_buzz, workflow_id)

        await self._tx(fn)

    async def mark_rejected(self, attempt_id: int, reason: str) -> None:
        """The API refused the input: release the reservation; the cell is never retried."""
        await self.drop_intent(attempt_id, AttemptState.REJECTED, reason)

    async def release(self, attempt_id: int) -> None:
        """Undo an intent the API never saw (no request was sent): back to planned."""
        await self.drop_intent(attempt_id, AttemptState.PLANNED, None)

    async def drop_intent(self, attempt_id: int, to: AttemptState, reason: str | None) -> None:
        """submitting -> `to` with the reservation released: the service charged nothing."""

        async def fn(db: aiosqlite.Connection) -> None:
            reserved = await self._reserved(db, attempt_id)
            await self._move(
                db, attempt_id, [AttemptState.SUBMITTING], to,
                ", reserved_buzz = 0, reason = ?", (reason,),
            )  # fmt: skip
            await self._commit_delta(db, -reserved)
            await self._event(db, attempt_id, "submitting", to, -reserved, reason)

        await self._tx(fn)

    async def _reserved(self, db: aiosqlite.Connection, attempt_id: int) -> int:
        # execute_fetchall: one trip to SQLite's thread, where execute + fetch + close is three
        rows = await db.execute_fetchall(
            "SELECT reserved_buzz FROM attempts WHERE id = ?", (attempt_id,)
        )
        if not rows:
            raise StoreError(f"attempt {attempt_id} does not exist")
        return int(list(rows)[0][0])

    async def _commit_delta(self, db: aiosqlite.Connection, delta_buzz: int) -> None:
        if delta_buzz:
            await db.execute(
                "UPDATE batch SET committed_buzz = committed_buzz + ? WHERE id = 1",
                (delta_buzz,),
            )

    # -- poller -------------------------------------------------------------------------

    async def mark_finished(
        self,
        attempt_id: int,
        outcome: AttemptState,
        *,
        charged_buzz: int,
        images: Sequence[ImageOutcome] = (),
        reason: str | None = None,
    ) -> int | None:
        """Record a terminal workflow: its outcome, what it finally cost, its images.

        A succeeded attempt's deliverable images become `pending` (to download), the others
        `lost` with their reason. A failed or expired attempt with attempts left plans the
        next one (a new externalId); its id is returned.
        """
        if not outcome.is_final or outcome is AttemptState.REJECTED:
            raise StoreError(f"attempt {attempt_id}: {outcome} is not a workflow outcome")

        async def fn(db: aiosqlite.Connection) -> int | None:
            rows = list(
                await db.execute_fetchall(
                    "SELECT a.state, a.charged_buzz, a.reserved_buzz, a.attempt, a.cell_key,"
                    " c.max_attempts FROM attempts a JOIN cells c ON c.key = a.cell_key"
                    " WHERE a.id = ?",
                    (attempt_id,),
                )
            )
            if not rows:
                raise StoreError(f"attempt {attempt_id} does not exist")
            row = rows[0]
            before = int(row["charged_buzz"]) + int(row["reserved_buzz"])
            await self._move(
                db, attempt_id, [AttemptState.SUBMITTING, AttemptState.RUNNING], outcome,
                ", reserved_buzz = 0, charged_buzz = ?, reason = ?", (charged_buzz, reason),
            )  # fmt: skip
            await self._commit_delta(db, charged_buzz - before)
            await self._event(db, attempt_id, row["state"], outcome, charged_buzz, reason)
            if outcome is AttemptState.SUCCEEDED:
                for image in images:
                    await self._insert_image(db, attempt_id, image)
            if outcome in RETRYABLE_OUTCOMES and row["attempt"] < row["max_attempts"]:
                return await self._insert_attempt(db, row["cell_key"], row["attempt"] + 1)
            return None

        result: int | None = await self._tx(fn)
        return result

    async def _insert_image(
        self, db: aiosqlite.Connection, attempt_id: int, image: ImageOutcome
    ) -> None:
        state = ImageState.PENDING if image.deliverable else ImageState.LOST
        await db.execute(
            "INSERT INTO images (attempt_id, idx, blob_id, state, reason, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (attempt_id, image.index, image.blob_id, state.value, image.reason, self._now()),
        )

    # -- downloader ---------------------------------------------------------------------

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
        """The image is on disk (written atomically) and verified."""
        await self._image_move(
            attempt_id, index, ImageState.DOWNLOADED,
            ", path = ?, sha256 = ?, size_bytes = ?, width = ?, height = ?",
            (path, sha256, size_bytes, width, height),
        )  # fmt: skip

    async def mark_lost(self, attempt_id: int, index: int, reason: str) -> None:
        """The service no longer has the image (or never delivered it)."""
        await self._image_move(attempt_id, index, ImageState.LOST, ", reason = ?", (reason,))

    async def _image_move(
        self,
        attempt_id: int,
        index: int,
        to: ImageState,
        sets: str,
        params: Sequence[Any],
    ) -> None:
        async def fn(db: aiosqlite.Connection) -> None:
            cur = await db.execute(
                f"UPDATE images SET state = ?, updated_at = ?{sets}"
                " WHERE attempt_id = ? AND idx = ? AND state = 'pending'",
                (to.value, self._now(), *params, attempt_id, index),
            )
            if cur.rowcount != 1:
                raise StoreError(f"image {attempt_id}/{index}: not pending, cannot become {to}")
            await self._event(db, attempt_id, "pending", f"image:{to}", None, str(index))

        await self._tx(fn)

    # -- the run settings (store/_settings.py) ------------------------------------------

    async def save_run_settings(self, settings: RunSettings) -> None:
        """Record the batch's captions, limits and attempts (`zbatch run`, when it plans)."""
        await self._tx(lambda db: save_run_settings(db, settings, self._now()))

    async def run_settings(self) -> RunSettings | None:
        """The batch's recorded run settings; None for a record made before they were kept."""
        async with self._lock:
            return await read_run_settings(self._db)
