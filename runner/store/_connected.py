"""`Connected`: the writer thread's connection, and how a transition or a read is run on it.

`Store` is the batch database's methods; this is what they run through. Every transition is a
synchronous function of one open transaction (`fn(tx, ...)`), every read a synchronous
function of the connection (`fn(db, ...)`); both run on the writer's thread (`_writer.py`),
one hand-off to it and one back per call. The functions take a `sqlite3.Connection` and use
only portable SQL with bound parameters, so a PostgreSQL backend (issue 18, psycopg 3) can
run the same functions on a writer thread of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Concatenate, ParamSpec, Self, TypeVar

import anyio

from runner.disk import BatchLock, database_error
from runner.store._fence import Fence
from runner.store._transitions import Tx
from runner.store._writer import Writer

P = ParamSpec("P")
T = TypeVar("T")


class Connected:
    """A connection owned by a writer thread, the batch lock, and the clock of its rows."""

    def __init__(
        self, lock: BatchLock | None, now: Callable[[], str], path: Path | None = None
    ) -> None:
        self._path = path
        self._batch_lock = lock
        self._now = now
        # One thread owns the connection and runs every transition and read (`_writer.py`).
        self._writer = Writer("zbatch-store", lambda db: self._commit(db))
        self.set_aside: Path | None = None  # where a damaged database was moved (--adopt)
        self.read_only = False  # a reader (`open(read_only=True)`): a write is a bug here
        # A worker's (`_workers.Worker`): its transitions are fenced by what it owns.
        self.fence: Fence | None = None

    async def _connect(self, connect: Callable[[], tuple[sqlite3.Connection, Path | None]]) -> None:
        """Open the connection on the writer's thread (`connect`); stop the thread on failure."""
        try:
            with anyio.CancelScope(shield=True):
                db, aside = await self._writer.call(lambda _: connect(), transition=False)
        except BaseException:
            self._writer.stop()
            raise
        self._writer.db = db
        self.set_aside = aside

    async def close(self) -> None:
        """Close the connection (after every transition queued before) and release the batch
        lock, even when the caller is cancelled."""
        try:
            with anyio.move_on_after(10, shield=True):
                await self._writer.call(lambda db: db.close(), transition=False)
        finally:
            self._writer.stop()
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

    @property
    def path(self) -> Path | None:
        """The database file (None for an in-memory one)."""
        return self._path

    # -- running a transaction or a read ---------------------------------------------------

    async def _tx(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(tx, ...)` on the writer's thread, in the group transaction it commits
        next (`_writer.py`), in a savepoint of its own: an error rolls back only it.

        Shielded from cancellation: a transition that has begun commits or rolls back whole,
        even when Ctrl-C cancels the task that asked for it. It returns only after the
        COMMIT: a caller that records an intent before a network call never makes that call
        unless the intent is on disk. A failure of the machine (the disk full at COMMIT,
        another program's lock past busy_timeout, a damaged page) leaves nothing of the
        group and is raised as its zbatch error (runner/disk/_faults.py).
        """
        now = self._now()

        def job(db: sqlite3.Connection) -> T:
            return fn(Tx(db, now, self.fence), *args, **kwargs)

        with anyio.CancelScope(shield=True):
            try:
                result: T = await self._writer.call(job, transition=True)
            except sqlite3.Error as exc:
                translated = self._translate(exc)
                if translated is exc:
                    raise
                raise translated from exc
        return result

    def _commit(self, db: sqlite3.Connection) -> None:
        """COMMIT a group, on the writer's thread: the write boundary of the database (tests
        inject SQLITE_FULL here)."""
        db.execute("COMMIT")

    def _translate(self, exc: sqlite3.Error) -> BaseException:
        translated = None if self.read_only else database_error(exc, self.path)
        return exc if translated is None else translated

    async def _read(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run the read `fn(db, ...)` on the writer's thread, between transactions. On a
        writable store, a failure of the machine (a damaged page) is raised as its zbatch
        error, as in `_tx`."""
        try:
            result: T = await self._writer.call(
                lambda db: fn(db, *args, **kwargs), transition=False
            )
        except sqlite3.Error as exc:
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        return result
