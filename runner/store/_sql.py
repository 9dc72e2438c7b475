"""The two statement helpers every synchronous store function uses on its connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


@contextmanager
def cursor(
    db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()
) -> Iterator[sqlite3.Cursor]:
    """Run `sql` and close its statement on leaving: a statement left open until the garbage
    collector finalizes it can hold a read open across a COMMIT."""
    cur = db.execute(sql, params)
    try:
        yield cur
    finally:
        cur.close()


def fetchall(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Every row of `sql`, its statement closed."""
    cur = db.execute(sql, params)
    try:
        return cur.fetchall()
    finally:
        cur.close()
