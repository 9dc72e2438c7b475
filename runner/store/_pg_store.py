"""`PostgresStore`: the batch's record in a PostgreSQL database (`--store postgresql://...`).

The same `Store`: the same transitions, reads and rows, run by the same writer thread (one
connection, group commits with a savepoint per transition), on a psycopg 3 connection
(`_pg.py`) instead of a sqlite3 one. What is its own: how it opens (`_pg_open.py`: the URL,
the durability check, the runner's advisory lock, the migrations), how it plans
(`_pg_plan.py`), and its reader (a second connection to the same database). The URL's
password never leaves it: `location` is the URL without password and query.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio

from runner.errors import BatchUnusable
from runner.identity import PlanRow
from runner.store import _reads as reads
from runner.store._pg_url import is_store_url, redact
from runner.store._rows import DatasetImage
from runner.store._store import Store, _utc_now

if TYPE_CHECKING:
    from runner.store._pg import PgConnection


def _pg_plan(
    db: sqlite3.Connection, rows: Iterable[PlanRow], *, generation: int, revision: int,
    leftover: str | None, max_attempts: int, now: Callable[[], str],
    commit: Callable[[sqlite3.Connection], None], stop: threading.Event,
) -> tuple[int, int]:  # fmt: skip
    """`_pg_plan.plan` (imported when a PostgreSQL store plans: psycopg is an extra)."""
    from runner.store._pg_plan import plan

    return plan(
        db, rows, generation=generation, revision=revision, leftover=leftover,
        max_attempts=max_attempts, now=now, commit=commit, stop=stop,
    )  # fmt: skip


def _connect(
    url: str, *, read_only: bool, lock: bool, create: bool = True, worker: bool = False
) -> tuple[sqlite3.Connection, Any]:
    """`_pg_open.connect_postgresql`, or why it cannot run: psycopg is not installed."""
    try:
        from runner.store._pg_open import connect_postgresql
    except ImportError as exc:
        raise BatchUnusable(
            f"{redact(url)}: a batch in PostgreSQL needs psycopg ({exc.name} is missing):"
            " pip install 'zbatch[postgresql]'"
        ) from None
    return connect_postgresql(url, read_only=read_only, lock=lock, create=create, worker=worker)


class PostgresStore(Store):
    """The batch database on PostgreSQL. Open with `await PostgresStore.open_url(url)`."""

    _plan = staticmethod(_pg_plan)
    _url = ""

    @classmethod
    async def open_url(
        cls,
        url: str,
        *,
        lock: bool = True,
        read_only: bool = False,
        create: bool = True,
        worker: bool = False,
        now: Callable[[], str] = _utc_now,
    ) -> PostgresStore:
        """Open (creating the schema and migrating it) the batch at `url`.

        `lock` takes the runner's lock of the batch (one runner per batch, `BatchInUse` for
        a second); `read_only` (for `zbatch status`) migrates nothing, takes no lock and
        opens a read-only session; without `create` a database with no zbatch schema is
        refused (`StoreError`) rather than given one; a `worker`'s lock (`zbatch worker`,
        `runner.store.Worker`) is shared with the other workers' and refused only beside a
        runner's.
        """
        store = cls(None, now, None)
        store._url = url
        store.read_only = read_only
        await store._connect(
            lambda: _connect(url, read_only=read_only, lock=lock, create=create, worker=worker)
        )
        return store

    @property
    def location(self) -> str:
        """Where the batch is, as a message may show it (no password, no query)."""
        return redact(self._url)

    async def dataset_images(
        self,
        states: Sequence[str] = ("downloaded",),
        *,
        chunk: int = 2_000,
        all_cells: bool = False,
    ) -> AsyncGenerator[list[DatasetImage], None]:
        """`Store.dataset_images`, its rows streamed from a server-side cursor (a client
        cursor of psycopg would fetch every row at once)."""
        sql = reads.dataset_images_sql(states, all_cells=all_cells)
        params = tuple(states)
        cur = await self._read(lambda db: cast("PgConnection", db).stream(sql, params))
        try:
            while rows := await self._read(lambda _: cur.fetchmany(chunk)):
                yield reads.dataset_images(rows)
        finally:
            with anyio.CancelScope(shield=True):
                await self._read(lambda _: cur.close())

    async def runner_pid(self) -> int | None:
        """The PostgreSQL session pid of the runner that holds the batch (any host), or None."""
        from runner.store._pg_open import runner_pid

        return await self._read(lambda db: runner_pid(cast("PgConnection", db)))

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Store]:
        """A read-only store of its own on the same database (a second session)."""
        async with await PostgresStore.open_url(self._url, read_only=True) as store:
            yield store


async def open_store(
    location: Path | str,
    *,
    lock: bool = True,
    read_only: bool = False,
    set_aside_damaged: bool = False,
    create: bool = True,
    now: Callable[[], str] = _utc_now,
) -> Store:
    """The batch at `location`: a `postgresql://` URL (`PostgresStore`) or a database file
    (`Store.open`; only a file has damage to set aside). Without `create` a PostgreSQL
    database with no zbatch schema is refused, not given one (every command but `run`)."""
    if is_store_url(location):
        return await PostgresStore.open_url(
            str(location), lock=lock, read_only=read_only, create=create, now=now
        )
    return await Store.open(
        Path(location), lock=lock, read_only=read_only, set_aside_damaged=set_aside_damaged,
        now=now,
    )  # fmt: skip
