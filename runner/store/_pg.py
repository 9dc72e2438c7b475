"""A psycopg 3 connection with the face of `sqlite3.Connection` the store's functions use.

Every transition and read of the store is a synchronous function of a connection
(`db.execute(sql, params)`, a cursor's `rowcount`, `lastrowid`, `fetchone` / `fetchall` /
`fetchmany`, rows read by index or by column name, `db.in_transaction`). `PgConnection` is
that much of `sqlite3.Connection` over a psycopg 3 (sync) connection, so the same functions
run on PostgreSQL, on the store's writer thread, unchanged: each statement goes through
`_dialect.postgres` (placeholders, `BEGIN IMMEDIATE`) once per text.

The connection is in autocommit mode, so the writer's own `BEGIN ... SAVEPOINT job ...
RELEASE job ... COMMIT` is the transaction, exactly as on SQLite; a read outside a group is
a statement of its own. `SUM` of integers is `numeric` in PostgreSQL: it is read back as an
int when it has no fractional part, as SQLite gives it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.pq import TransactionStatus

from runner.errors import BatchUnusable
from runner.store._dialect import postgres


class Row(Sequence[Any]):
    """One row, read by index (`row[0]`) or by column name (`row["state"]`), as `sqlite3.Row`."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = tuple(values)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values
        return isinstance(other, tuple) and self._values == other

    __hash__ = None  # type: ignore[assignment]  # like a list: compared, never a key

    def keys(self) -> list[str]:
        return list(self._names)

    def __repr__(self) -> str:
        return f"Row{self._values!r}"


def _row_factory(cursor: psycopg.Cursor[Any]) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        return Row(names, values)

    return make


class _IntegralNumeric(Loader):
    """`numeric` (what `SUM` of integers gives) as int when it is whole, else Decimal."""

    def load(self, data: Any) -> int | Decimal:
        text = bytes(data).decode("ascii")
        number = Decimal(text)
        return int(number) if number == number.to_integral_value() else number


class PgCursor:
    """A statement's result, as `sqlite3.Cursor` gives it to the store's functions."""

    def __init__(self, connection: PgConnection, cursor: psycopg.Cursor[Any]) -> None:
        self._connection = connection
        self._cursor = cursor
        self._serial = connection.statements

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    @property
    def lastrowid(self) -> int | None:
        """The id the INSERT just made (`lastval()`), asked right after it, before any other
        statement on the connection (as the store's functions do); else an error."""
        if self._connection.statements != self._serial:
            raise RuntimeError("lastrowid asked after another statement ran on the connection")
        return int(self._connection.raw.execute("SELECT lastval()").fetchone()[0])  # type: ignore[index]

    @property
    def description(self) -> Any:
        return self._cursor.description

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor.description else []

    def fetchmany(self, size: int) -> list[Any]:
        return self._cursor.fetchmany(size) if self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    def close(self) -> None:
        self._cursor.close()


class PgConnection:
    """The part of `sqlite3.Connection` the store uses, on a psycopg 3 connection.

    A statement that fails because the connection is gone (the server restarted, the
    network cut) is raised as `BatchUnusable` naming `shown` (the URL without its password):
    nothing of the group was committed, or its COMMIT's answer was lost; either way each
    intent is recorded with its externalId or not at all, and the next run resumes from
    what the database holds."""

    def __init__(self, raw: psycopg.Connection[Any], shown: str = "the PostgreSQL batch") -> None:
        self.shown = shown
        raw.autocommit = True
        raw.row_factory = _row_factory
        raw.adapters.register_loader("numeric", _IntegralNumeric)
        self.raw = raw
        self.statements = 0  # how many ran: `PgCursor.lastrowid` checks nothing ran since

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        self.statements += 1
        cursor = self.raw.cursor()
        try:
            if params:
                cursor.execute(postgres(sql, with_params=True), tuple(params))
            else:
                cursor.execute(postgres(sql, with_params=False))
        except psycopg.OperationalError as exc:
            if self.raw.closed or self.raw.broken:
                raise self._lost(exc) from None
            raise
        return PgCursor(self, cursor)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> PgCursor:
        self.statements += 1
        cursor = self.raw.cursor()
        try:
            cursor.executemany(postgres(sql, with_params=True), rows)
        except psycopg.OperationalError as exc:
            if self.raw.closed or self.raw.broken:
                raise self._lost(exc) from None
            raise
        return PgCursor(self, cursor)

    def stream(self, sql: str, params: Sequence[Any]) -> PgCursor:
        """`sql`'s rows fetched a `fetchmany` at a time from a server-side cursor (WITH
        HOLD: it outlives the statement's own transaction), not all at once into memory."""
        self.statements += 1
        cursor = self.raw.cursor(name=f"zbatch_stream_{self.statements}", withhold=True)
        try:
            cursor.execute(postgres(sql, with_params=bool(params)), tuple(params) or None)
        except psycopg.OperationalError as exc:
            if self.raw.closed or self.raw.broken:
                raise self._lost(exc) from None
            raise
        return PgCursor(self, cursor)

    def _lost(self, exc: psycopg.OperationalError) -> BatchUnusable:
        """`exc` (the connection is gone) as `BatchUnusable`. Other operational errors (a
        deadlock, a statement timeout) are the statement's, raised as they are."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return BatchUnusable(
            f"lost the connection to {self.shown} ({first}): what was committed stays;"
            " run again to resume"
        )

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        """Release the session's advisory locks (the runner's lock of the batch) before
        closing: the server ends a closed session a moment later, and the next runner must
        not find the lock still held then."""
        try:
            if not self.raw.closed and not self.in_transaction:
                self.raw.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:
            pass  # the session is gone: so is its lock
        finally:
            self.raw.close()
