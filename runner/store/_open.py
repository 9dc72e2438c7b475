"""Opening the batch database: the file's header checked, the pragmas set, the schema migrated.

`Store.open` decides what to do (take the batch lock, set a damaged file aside); this module
does the opening. A database that cannot be used is refused before anything in it changes,
each with its own error (runner/disk/_faults.py): `DatabaseDamaged` (not SQLite, truncated,
malformed), `NewerSchema`, `DatabaseLocked` (another program held SQLite's lock past
busy_timeout), `DiskFull` / `ReadOnlyDisk`. WAL with `synchronous=FULL`: a committed intent is
on disk before its network call is made.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from runner.disk import (
    BUSY_TIMEOUT_MS,
    create_private,
    damaged,
    database_error,
    disk_error,
    fsync_dir,
)
from runner.errors import DatabaseDamaged, LocalDiskError, StoreError
from runner.store._migrations import MIGRATIONS, SCHEMA_VERSION, newer_schema

log = structlog.get_logger(__name__)
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",  # an intent is on disk before its network call
    "PRAGMA foreign_keys=ON",
)  # and PRAGMA busy_timeout, first of all (`BUSY_TIMEOUT_MS`)
_BUSY_TIMEOUT = f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}"
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


def disk_refusal(exc: OSError, path: Path, doing: str) -> LocalDiskError | OSError:
    """`exc` as the zbatch error of the disk under `path`, or itself."""
    return disk_error(exc, path.parent, doing) or exc


def run(db: sqlite3.Connection, sql: str) -> list[Any]:
    """Run `sql` and close its statement at once (fetching every row).

    A statement left open until the garbage collector finalizes it counts as a write in
    progress, which makes a later COMMIT fail ("SQL statements in progress"); `journal_mode`
    answers a row.
    """
    cur = db.execute(sql)
    try:
        return list(cur.fetchall())
    finally:
        cur.close()


def connect_or_set_aside(
    path: Path, *, set_aside_damaged: bool
) -> tuple[sqlite3.Connection, Path | None]:
    """The connection to the database at `path` (`connect`), and None.

    With `set_aside_damaged` (`zbatch run --adopt`) every page is checked too, and a damaged
    database is renamed aside (`set_aside`, never deleted): then the connection is to a new
    database in its place, and the second value is where the damaged one went.
    """
    problem = header_problem(path)
    if problem is None:
        try:
            return connect(path, check=set_aside_damaged), None
        except DatabaseDamaged as exc:
            if not set_aside_damaged:
                raise
            problem = exc.detail
    elif not set_aside_damaged:
        raise damaged(str(path), problem)
    aside = set_aside(path)
    log.warning("damaged_database_set_aside", problem=problem, moved_to=str(aside))
    return connect(path, check=False), aside


def connect(path: Path, *, check: bool) -> sqlite3.Connection:
    """Connect to the database at `path` (creating it, 0600), refuse a newer schema before
    changing anything, check every page when asked (`PRAGMA quick_check`), set the pragmas,
    migrate. SQLite's errors are raised as their zbatch error."""
    db: sqlite3.Connection | None = None
    try:
        try:
            create_private(path)  # 0600; SQLite gives -wal and -shm the same mode
        except OSError as exc:
            raise disk_refusal(exc, path, f"creating {path.name}") from exc
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        # First only reads: the schema version (a newer zbatch's file is left untouched)
        # and, when asked, every page.
        run(db, _BUSY_TIMEOUT)
        version = int((run(db, "PRAGMA user_version"))[0][0])
        if version > SCHEMA_VERSION:
            raise newer_schema(path, version)
        if check:
            verdict = [str(r[0]) for r in run(db, "PRAGMA quick_check(5)")]
            if verdict != ["ok"]:
                raise damaged(str(path), "; ".join(verdict))
        for pragma in _PRAGMAS:
            run(db, pragma)
        migrate(db, path)
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        translated = database_error(exc, path)
        if translated is None:
            raise
        raise translated from exc
    except BaseException:
        if db is not None:
            db.close()
        raise
    return db


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations past the database's `PRAGMA user_version`, each whole or not at all.

    Foreign keys are off while they run (a table rebuilt, migration 7, would otherwise take
    its children's references with it: SQLite's own recipe for changing a table), and every
    reference is checked (`PRAGMA foreign_key_check`) before each one commits."""
    version = int((run(db, "PRAGMA user_version"))[0][0])
    if version > SCHEMA_VERSION:  # another zbatch upgraded it since `connect` looked
        raise newer_schema(path, version)
    if version == SCHEMA_VERSION:
        return
    run(db, "PRAGMA foreign_keys=OFF")  # only outside a transaction does it take effect
    try:
        for number in range(version, SCHEMA_VERSION):
            _migrate_one(db, number)
    finally:
        run(db, "PRAGMA foreign_keys=ON")


def _migrate_one(db: sqlite3.Connection, number: int) -> None:
    """Migration `number` (0-based) and the version bump in one transaction."""
    # executescript commits whatever is open first; the script opens the transaction and
    # leaves it open, so the schema change and the version bump land together or not at all.
    script = f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]}\nPRAGMA user_version = {number + 1};"
    try:
        db.executescript(script)
        broken = run(db, "PRAGMA foreign_key_check")
        if broken:
            raise StoreError(
                f"migration {number + 1} would leave {len(broken)} broken reference(s),"
                f" the first in table {broken[0][0]}: nothing was changed"
            )
        db.execute("COMMIT")
    except sqlite3.IntegrityError as exc:  # a migration's own check refused this record
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise StoreError(
            f"migration {number + 1} refused this record ({exc}): nothing was changed"
        ) from None
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def connect_read_only(path: Path) -> sqlite3.Connection:
    """Connect to an existing database as a reader only: no lock, no migration, no write.

    It works while a run holds the batch. StoreError for a file that is not a zbatch
    database, or one at another schema version (an older one: `zbatch run` migrates it).
    """
    if not path.is_file():
        raise StoreError(f"{path} does not exist")
    uri = path.resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.row_factory = sqlite3.Row
        run(db, _BUSY_TIMEOUT)
        rows = run(db, "PRAGMA user_version")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(f"{path} is not a zbatch batch database ({exc})") from exc
    except BaseException:
        db.close()
        raise
    version = int(rows[0][0]) if rows else 0
    if version != SCHEMA_VERSION:
        db.close()
        if version == 0:
            raise StoreError(f"{path} is not a zbatch batch database (no zbatch schema)")
        if version > SCHEMA_VERSION:
            raise newer_schema(path, version)
        raise StoreError(
            f"{path} has schema version {version}, this zbatch reads {SCHEMA_VERSION}:"
            " run `zbatch run` to migrate"
        )
    return db
