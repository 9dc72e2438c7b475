"""Opening a batch on PostgreSQL (`--store postgresql://...`): connect, check, lock, migrate.

The URL is libpq's (`postgresql://user:password@host:port/database?...`); one database (or
one schema, through `options=-csearch_path=...`) holds one batch, as one `batch.sqlite`
does. Its password and query never leave this module: every message, log line and error
names the batch by `redact(url)` (user, host, port and database only), and an error from
libpq is re-raised without the original chained to it.

A writable store takes a session advisory lock of the database (`pg_advisory_lock`, waiting
`LOCK_WAIT` at most): one runner per batch, as the folder lock gives on SQLite; workers
(`zbatch worker`, the claims and leases of docs/design/scale-out.md) each take it shared
(`pg_advisory_lock_shared`): any number of workers together, never beside a runner that does
not claim. PostgreSQL frees it when the session ends, however the runner died. The
migrations run under a transaction advisory lock, all of them and the version bump in one
transaction (PostgreSQL's DDL is transactional). `synchronous_commit = off` is refused: a
committed intent must be durable before its request leaves.
"""

from __future__ import annotations

import sqlite3
from typing import Any, cast

import psycopg

from runner.errors import BatchInUse, BatchUnusable, NewerSchema, StoreError
from runner.store._migrations import SCHEMA_VERSION
from runner.store._pg import PgConnection
from runner.store._pg_migrations import PG_MIGRATIONS, SCHEMA_TABLE
from runner.store._pg_url import redact, scrub

_BATCH_LOCK = 0x7A62_6174  # the runner's session lock: one runner per batch
_MIGRATION_LOCK = 0x7A62_6D67  # taken by whoever migrates, for that transaction
LOCK_WAIT = "3s"  # how long a runner waits for the batch's lock before BatchInUse


def connect_postgresql(
    url: str, *, read_only: bool, lock: bool, create: bool = True, worker: bool = False
) -> tuple[sqlite3.Connection, None]:
    """The connection to the batch at `url`, checked, locked (when `lock`) and migrated
    (unless `read_only`), with the face the store's functions use (`PgConnection`). Without
    `create` (every command but `zbatch run` and `zbatch worker`) a database with no zbatch
    schema is refused (`StoreError`) before anything is written to it; a `worker`'s lock is
    shared with the other workers'."""
    shown = redact(url)
    try:
        raw = psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        reason = scrub(str(exc).strip(), url)
        raise BatchUnusable(f"cannot connect to {shown}: {reason}") from None
    db = PgConnection(raw, shown)
    try:
        _check_durable(db, shown)
        if read_only:
            db.execute("SET default_transaction_read_only = on")
            _check_version(db, shown, exact=True)
        else:
            if not create and _version(db) is None:
                raise StoreError(f"{shown} holds no zbatch batch (no zbatch schema)")
            if lock:
                _take_batch_lock(db, shown, shared=worker)
            migrate(db, shown)
    except psycopg.Error as exc:
        db.close()
        raise BatchUnusable(f"{shown}: {scrub(str(exc).strip(), url)}") from None
    except BaseException:
        db.close()
        raise
    # The store's functions are typed against sqlite3.Connection; this is the part of it
    # they use (`_pg.py`).
    return cast(sqlite3.Connection, db), None


def _take_batch_lock(db: PgConnection, shown: str, *, shared: bool = False) -> None:
    """Take the runner's lock of the batch, waiting `LOCK_WAIT` at most: a runner killed a
    moment ago holds it until the server has ended its session (it reads the closed socket
    and exits, which the next runner may overtake). Then `BatchInUse`. `shared`: a
    worker's, held with the other workers'."""
    db.execute(f"SET lock_timeout = '{LOCK_WAIT}'").close()
    take = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
    try:
        db.execute(f"SELECT {take}(?)", (_BATCH_LOCK,)).close()
    except psycopg.errors.LockNotAvailable:
        raise BatchInUse(f"{shown} is in use by another zbatch ({_holder(db)})") from None
    finally:
        db.execute("SET lock_timeout = 0").close()


def _holder(db: PgConnection) -> str:
    """Which PostgreSQL session holds the runner's lock of the batch."""
    pid = runner_pid(db)
    return "no session holds it now: try again" if pid is None else f"its session's pid {pid}"


def runner_pid(db: PgConnection) -> int | None:
    """The pid of the PostgreSQL session that holds the runner's lock of the batch (a
    `zbatch run`, `retry`, `cancel` or `verify --repair` on any host), or None; never locks."""
    pid = _one(
        db,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND objid = ? LIMIT 1",
        _BATCH_LOCK,
    )
    return None if pid is None else int(pid)


def _one(db: PgConnection, sql: str, *params: Any) -> Any:
    cur = db.execute(sql, params)
    try:
        row = cur.fetchone()
    finally:
        cur.close()
    return None if row is None else row[0]


def _check_durable(db: PgConnection, shown: str) -> None:
    if _one(db, "SHOW synchronous_commit") == "off":
        raise BatchUnusable(
            f"{shown} has synchronous_commit = off: an intent must be durable before its"
            " request leaves; set it on for zbatch's role or database"
        )


def _version(db: PgConnection) -> int | None:
    """The schema version, or None when the database has no zbatch schema table."""
    if _one(db, "SELECT to_regclass('schema_version') IS NOT NULL") is not True:
        return None
    version = _one(db, "SELECT version FROM schema_version WHERE id = 1")
    return 0 if version is None else int(version)


def _newer(shown: str, version: int) -> NewerSchema:
    return NewerSchema(
        f"{shown} was written by a newer zbatch (schema {version}, this zbatch knows up to"
        f" {SCHEMA_VERSION}); upgrade zbatch (the database was left as it was)"
    )


def _check_version(db: PgConnection, shown: str, *, exact: bool) -> None:
    version = _version(db) or 0
    if version > SCHEMA_VERSION:
        raise _newer(shown, version)
    if exact and version == 0:
        raise StoreError(f"{shown} holds no zbatch batch (no zbatch schema)")
    if exact and version != SCHEMA_VERSION:
        raise StoreError(
            f"{shown} has schema version {version}, this zbatch reads {SCHEMA_VERSION}:"
            " run `zbatch run` to migrate"
        )


def migrate(db: PgConnection, shown: str) -> None:
    """Apply the migrations past the database's schema version, all in one transaction
    under the migration lock (a second runner waits, then finds nothing to do)."""
    if len(PG_MIGRATIONS) != SCHEMA_VERSION:
        raise AssertionError("PG_MIGRATIONS must match _migrations.MIGRATIONS, one for one")
    _check_version(db, shown, exact=False)  # a newer schema is refused before anything
    db.execute("BEGIN")
    try:
        db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,)).close()
        db.execute(SCHEMA_TABLE)
        version = _version(db) or 0
        if version > SCHEMA_VERSION:  # another zbatch upgraded it since
            raise _newer(shown, version)
        for number in range(version, SCHEMA_VERSION):
            db.execute(PG_MIGRATIONS[number])
        if version < SCHEMA_VERSION:
            db.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (SCHEMA_VERSION,),
            )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
