"""The writer: one thread owns the batch database's connection and runs every job on it.

A job is a plain synchronous callable of the connection. The event loop hands it over
(`call`), the thread runs it, and the result comes back with `loop.call_soon_threadsafe` on
an asyncio future: one hand-off each way per job, where aiosqlite made one per statement.

Transitions are grouped: the thread takes what has queued (at most `GROUP` jobs) and runs
the consecutive transitions among them inside ONE `BEGIN IMMEDIATE ... COMMIT`, each in a
SAVEPOINT of its own. A transition that raises (a StoreError guard) rolls back only itself
and its caller gets the exception; the others commit. Every future of a group is resolved
only after its COMMIT returned, so nothing downstream (a submit, a download) happens before
its record is on disk. When the COMMIT fails (a full disk), every transition of the group
gets that error and nothing of them is on disk. One fsync per group, not per transition.

Plain jobs (reads, the plan, opening and closing) run alone, between groups, in the order
they were queued. The SQL is portable (bound parameters): a PostgreSQL backend (issue 18)
can run the same synchronous transition functions in a writer thread of its own, on a
psycopg 3 connection.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GROUP = 256  # transitions committed together at most

Commit = Callable[[sqlite3.Connection], None]


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    transition: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = field(default=None)


def _settle(job: _Job) -> None:
    """On the event loop: hand the job's result or error to whoever awaits it."""
    if job.future.done():  # its caller stopped waiting (a read cancelled)
        return
    if job.error is not None:
        job.future.set_exception(job.error)
    else:
        job.future.set_result(job.result)


class Writer:
    """The thread that owns one connection; `Store` opens it there with a plain job, then
    sets `db`."""

    def __init__(self, name: str, commit: Commit) -> None:
        self.db: sqlite3.Connection | None = None
        self._commit = commit
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[sqlite3.Connection], Any], *, transition: bool) -> Any:
        """Run `fn(db)` on the writer's thread; its result (or its exception). A transition
        runs in the next group transaction and returns after its COMMIT. Once queued, a job
        runs whole even if its caller stops waiting (`Store._tx` waits shielded)."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, transition, loop, loop.create_future())
        self._jobs.put(job)
        return await job.future

    def stop(self) -> None:
        """End the thread once the jobs queued before are done (not waiting for it)."""
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- on the writer's thread ----------------------------------------------------------

    def _main(self) -> None:
        while jobs := self._next_jobs():
            group: list[_Job] = []
            for job in jobs:
                if job.transition:
                    group.append(job)
                    continue
                self._run_group(group)
                group = []
                self._run_plain(job)
            self._run_group(group)

    def _next_jobs(self) -> list[_Job]:
        """Wait for a job; then take what else has queued, up to `GROUP`. [] to stop."""
        first = self._jobs.get()
        if first is None:
            return []
        jobs = [first]
        while len(jobs) < GROUP:
            try:
                more = self._jobs.get_nowait()
            except queue.Empty:
                break
            if more is None:
                self._jobs.put(None)  # stop after these
                break
            jobs.append(more)
        return jobs

    def _run_plain(self, job: _Job) -> None:
        try:
            job.result = job.fn(self.db)  # type: ignore[arg-type]  # None only to open it
        except BaseException as exc:
            job.error = exc
        self._settle_all([job])

    def _run_group(self, group: list[_Job]) -> None:
        """Run `group` in one transaction, each in a savepoint; settle them after COMMIT."""
        if not group:
            return
        db = self.db
        try:
            assert db is not None, "the writer's connection is not open"
            db.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._fail(group, exc)
            return
        done: list[_Job] = []
        for i, job in enumerate(group):
            try:
                db.execute("SAVEPOINT job")
                job.result = job.fn(db)
                db.execute("RELEASE job")
            except BaseException as exc:
                job.error = exc
                if not self._undo(db):  # the whole transaction is gone: so are the others'
                    self._rollback(db)
                    self._fail(done, exc)
                    self._settle_all([job])
                    self._run_group(group[i + 1 :])
                    return
            done.append(job)
        try:
            self._commit(db)
        except BaseException as exc:
            self._rollback(db)
            self._fail(done, exc)
            return
        self._settle_all(done)

    @staticmethod
    def _undo(db: sqlite3.Connection) -> bool:
        """Roll back the failed job's savepoint; False when that is not possible."""
        if not db.in_transaction:  # SQLite rolled the whole transaction back
            return False
        try:
            db.execute("ROLLBACK TO job")
            db.execute("RELEASE job")
        except Exception:  # sqlite3's or psycopg's
            return False
        return True

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        if db.in_transaction:  # SQLite may have rolled back already
            try:
                db.execute("ROLLBACK")
            except Exception:  # sqlite3's or psycopg's
                pass

    def _fail(self, jobs: list[_Job], exc: BaseException) -> None:
        for job in jobs:
            job.error = exc  # a job that had failed on its own is not on disk either
            job.result = None
        self._settle_all(jobs)

    @staticmethod
    def _settle_all(jobs: list[_Job]) -> None:
        for job in jobs:
            try:
                job.loop.call_soon_threadsafe(_settle, job)
            except RuntimeError:  # its event loop is closed: nobody waits any more
                pass
