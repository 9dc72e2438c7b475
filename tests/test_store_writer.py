"""The store's writer thread: queued transitions commit as one group, each in a savepoint.

A plain job that waits on a gate holds the thread while the transitions queue up behind
it, so they are taken as one group whatever the scheduling. On both backends: a sqlite3
connection, and PostgreSQL's through `PgConnection` (where a failed statement puts the whole
transaction in error until its savepoint is rolled back).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any, cast

import anyio
import anyio.lowlevel
import psycopg
import pytest

from runner.store._pg import PgConnection
from runner.store._writer import Writer
from tests.services import StoreBackend


def _open(backend: StoreBackend) -> sqlite3.Connection:
    if backend.name == "sqlite":
        db = sqlite3.connect(backend.location, isolation_level=None, check_same_thread=False)
    else:
        db = cast(sqlite3.Connection, PgConnection(psycopg.connect(str(backend.location))))
    db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER CHECK (n < 1000))")
    return db


def _on_disk(backend: StoreBackend) -> list[int]:
    return [int(str(r[0])) for r in backend.rows("SELECT n FROM t ORDER BY n")]


async def _call(writer: Writer, fn: Callable[[sqlite3.Connection], Any], transition: bool) -> None:
    await writer.call(fn, transition=transition)


async def _grouped(writer: Writer, jobs: list[object]) -> list[object]:
    """Queue `jobs` (numbers to insert, or an exception to raise after inserting 99, or
    "sql" to insert 99 then break the table's check) behind a gate, release it, and gather
    what each job's caller got."""
    gate = threading.Event()
    results: list[object] = [None] * len(jobs)

    def insert(db: sqlite3.Connection, job: object) -> int:
        if isinstance(job, Exception):
            db.execute("INSERT INTO t VALUES (99)")
            raise job
        if job == "sql":
            db.execute("INSERT INTO t VALUES (99)")
            db.execute("INSERT INTO t VALUES (1000)")  # the CHECK refuses it
        db.execute("INSERT INTO t VALUES (?)", (job,))
        return int(str(job))

    async def one(i: int, job: object) -> None:
        try:
            results[i] = await writer.call(lambda db: insert(db, job), transition=True)
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(_call, writer, lambda _: gate.wait(10), False)
        await anyio.lowlevel.checkpoint()
        for i, job in enumerate(jobs):
            tg.start_soon(one, i, job)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    return results


async def _writer(backend: StoreBackend, commit: object) -> Writer:
    writer = Writer("test-writer", commit)  # type: ignore[arg-type]
    writer.db = await writer.call(lambda _: _open(backend), transition=False)
    return writer


async def _stop(writer: Writer) -> None:
    """Close the connection on its thread (as `Store.close` does), then end the thread: a
    connection left to the garbage collector is a ResourceWarning on Python 3.13."""
    try:
        await writer.call(lambda db: db.close(), transition=False)
    finally:
        writer.stop()
        writer.join(5)


async def test_a_failing_transition_rolls_back_alone_and_the_group_commits_once(
    store_backend: StoreBackend,
) -> None:
    commits: list[int] = []

    def commit(db: sqlite3.Connection) -> None:
        commits.append(1)
        db.execute("COMMIT")

    writer = await _writer(store_backend, commit)
    try:
        refused = ValueError("guard")
        results = await _grouped(writer, [1, refused, 3, "sql", 5])
    finally:
        await _stop(writer)
    assert results[:3] == [1, refused, 3]
    assert isinstance(results[3], sqlite3.IntegrityError | psycopg.errors.CheckViolation)
    assert results[4] == 5
    # 99 of each refused job rolled back with its savepoint, the others committed
    assert _on_disk(store_backend) == [1, 3, 5]
    assert commits == [1]  # one COMMIT for the five


async def test_a_failed_commit_fails_every_transition_of_its_group(
    store_backend: StoreBackend,
) -> None:
    failures = ["full"]

    def commit(db: sqlite3.Connection) -> None:
        if failures:
            failures.pop()
            raise sqlite3.OperationalError("database or disk is full")
        db.execute("COMMIT")

    writer = await _writer(store_backend, commit)
    try:
        results = await _grouped(writer, [1, 2, 3])
        assert all(isinstance(r, sqlite3.OperationalError) for r in results)
        assert _on_disk(store_backend) == []  # nothing of the group is on disk
        assert await writer.call(lambda db: db.execute("INSERT INTO t VALUES (4)"), transition=True)
    finally:
        await _stop(writer)
    assert _on_disk(store_backend) == [4]  # and the next group goes through


@pytest.mark.parametrize("kind", ["transition", "read"])
async def test_a_job_runs_whole_even_when_its_caller_is_cancelled(
    store_backend: StoreBackend, kind: str
) -> None:
    writer = await _writer(store_backend, lambda db: db.execute("COMMIT"))
    gate = threading.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_call, writer, lambda _: gate.wait(10), False)
            tg.start_soon(
                _call,
                writer,
                lambda db: db.execute("INSERT INTO t VALUES (7)"),
                kind == "transition",
            )
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        gate.set()
        await writer.call(lambda _: None, transition=False)  # after the cancelled job
    finally:
        await _stop(writer)
    assert _on_disk(store_backend) == [7]
