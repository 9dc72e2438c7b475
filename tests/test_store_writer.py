"""The store's writer thread: queued transitions commit as one group, each in a savepoint.

A plain job that waits on a gate holds the thread while the transitions queue up behind
it, so they are taken as one group whatever the scheduling.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from runner.store._writer import Writer


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    return db


def _on_disk(path: Path) -> list[int]:
    other = sqlite3.connect(path)
    try:
        return [r[0] for r in other.execute("SELECT n FROM t ORDER BY n")]
    finally:
        other.close()


async def _call(writer: Writer, fn: Callable[[sqlite3.Connection], Any], transition: bool) -> None:
    await writer.call(fn, transition=transition)


async def _grouped(writer: Writer, jobs: list[object]) -> list[object]:
    """Queue `jobs` (numbers to insert, or an exception to raise after inserting 99) behind
    a gate, release it, and gather what each job's caller got."""
    gate = threading.Event()
    results: list[object] = [None] * len(jobs)

    def insert(db: sqlite3.Connection, job: object) -> int:
        if isinstance(job, Exception):
            db.execute("INSERT INTO t VALUES (99)")
            raise job
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


async def _writer(path: Path, commit: object) -> Writer:
    writer = Writer("test-writer", commit)  # type: ignore[arg-type]
    writer.db = await writer.call(lambda _: _open(path), transition=False)
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
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.sqlite"
    commits: list[int] = []

    def commit(db: sqlite3.Connection) -> None:
        commits.append(1)
        db.execute("COMMIT")

    writer = await _writer(path, commit)
    try:
        refused = ValueError("guard")
        results = await _grouped(writer, [1, refused, 3])
    finally:
        await _stop(writer)
    assert results == [1, refused, 3]
    assert _on_disk(path) == [1, 3]  # 99 of the refused job rolled back with its savepoint
    assert commits == [1]  # one COMMIT for the three


async def test_a_failed_commit_fails_every_transition_of_its_group(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    failures = ["full"]

    def commit(db: sqlite3.Connection) -> None:
        if failures:
            failures.pop()
            raise sqlite3.OperationalError("database or disk is full")
        db.execute("COMMIT")

    writer = await _writer(path, commit)
    try:
        results = await _grouped(writer, [1, 2, 3])
        assert all(isinstance(r, sqlite3.OperationalError) for r in results)
        assert _on_disk(path) == []  # nothing of the group is on disk
        assert await writer.call(lambda db: db.execute("INSERT INTO t VALUES (4)"), transition=True)
    finally:
        await _stop(writer)
    assert _on_disk(path) == [4]  # and the next group goes through


@pytest.mark.parametrize("kind", ["transition", "read"])
async def test_a_job_runs_whole_even_when_its_caller_is_cancelled(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "w.sqlite"
    writer = await _writer(path, lambda db: db.execute("COMMIT"))
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
    assert _on_disk(path) == [7]
