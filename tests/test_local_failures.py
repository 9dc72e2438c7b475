"""The local machine fails: a full or read-only disk, a locked, damaged or newer database.

Each test runs on a real tmpfs where this machine lets us mount one, else with the fault
injected at the same write boundary (tests/diskfull.py); never skipped. docs/reliability.md,
"The local machine", lists every row and which way it ran.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runner.cli._main import main
from runner.disk import _faults as local_faults
from runner.disk._atomic import atomic_write_bytes
from runner.disk._lock import BatchLock
from runner.disk._out_folder import check_out_folder
from runner.errors import (
    BatchInUse,
    DatabaseDamaged,
    DatabaseLocked,
    DiskFull,
    NewerSchema,
    ReadOnlyDisk,
)
from runner.identity import PlanRow
from runner.log import configure_logging
from runner.store._migrations import SCHEMA_VERSION
from runner.store._open import header_problem
from runner.store._rows import AttemptState
from runner.store._store import Store
from tests.cells import turbo_cell
from tests.diskfull import SmallDisk, mount_permitted, small_disk

MANIFEST = """
name: local
out: out
budget: 1000
defaults: {size: 64x64, quantity: 1, model: turbo}
grid:
  prompt: ["a fox", "a lighthouse"]
"""


def cell(n: int) -> PlanRow:
    return turbo_cell(n, estimate_buzz=1)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    return path


def run_cli(*args: str) -> int:
    return main(["run", *args, "--emulator", "--time-scale", "0", "--quiet"])


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "disk", 512 * 1024) as d:
        assert d.real == mount_permitted()  # a failed mount is a failure, not a fallback
        d.inject(monkeypatch)
        yield d


# -- disk full -------------------------------------------------------------------------------


def test_a_full_disk_refuses_an_image_names_the_folder_and_leaves_no_temp_file(
    disk: SmallDisk,
) -> None:
    target = disk.path / "images" / "ab" / "x_0.jpg"
    atomic_write_bytes(target, b"old")
    disk.fill()
    with pytest.raises(DiskFull) as caught:
        atomic_write_bytes(target, b"n" * 64 * 1024)
    message = str(caught.value)
    assert f"the disk holding {target.parent} is full (" in message, disk.kind
    assert " free of " in message
    assert "run the same command again" in message
    assert target.read_bytes() == b"old"  # the old file, whole
    assert not list(target.parent.glob(".*.tmp"))  # the temp file is gone
    disk.free()
    atomic_write_bytes(target, b"n" * 64 * 1024)  # the cause fixed: the write goes through
    assert target.read_bytes() == b"n" * 64 * 1024


async def test_sqlite_full_at_the_intent_leaves_the_attempt_planned(disk: SmallDisk) -> None:
    """SQLITE_FULL at the COMMIT of `reserve`: nothing of the intent is kept, so the
    submitter never sends it; once space is back the same reserve goes through."""
    with anyio.fail_after(20):
        async with await Store.open(disk.path / "batch.sqlite") as store:
            await store.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
            await store.plan_rows([cell(i) for i in range(3)], max_attempts=1)
            attempt = (await store.next_planned(1))[0]
            disk.fill()
            with pytest.raises(DiskFull, match="is full"):
                await store.reserve(attempt.id, 8)
            assert (await store.budget()).committed_buzz == 0
            assert [a.id for a in await store.next_planned(3)][0] == attempt.id
            assert await store.active() == []  # not submitting: nothing would be sent
            disk.free()
            assert await store.reserve(attempt.id, 8)
            assert (await store.budget()).committed_buzz == 8
            assert [a.state for a in await store.active()] == [AttemptState.SUBMITTING]


async def test_a_database_made_read_only_during_a_run_stops_at_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INJECTED (a filesystem with the database open for writing cannot be remounted
    read-only): SQLITE_READONLY at a transition's COMMIT is ReadOnlyDisk (exit 6) naming the
    file, the transition is rolled back whole, and it goes through once writable again."""
    with anyio.fail_after(20):
        async with await Store.open(tmp_path / "batch.sqlite") as store:
            await store.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
            await store.plan_rows([cell(i) for i in range(2)], max_attempts=1)
            attempt = (await store.next_planned(1))[0]
            real_commit = Store._commit

            def read_only_commit(self: Store, db: sqlite3.Connection) -> None:
                exc = sqlite3.OperationalError("attempt to write a readonly database")
                exc.sqlite_errorname = "SQLITE_READONLY"
                raise exc

            monkeypatch.setattr(Store, "_commit", read_only_commit)
            with pytest.raises(ReadOnlyDisk, match="batch.sqlite") as caught:
                await store.reserve(attempt.id, 8)
            assert type(caught.value).exit_code == 6
            monkeypatch.setattr(Store, "_commit", real_commit)
            assert (await store.budget()).committed_buzz == 0
            assert await store.active() == []
            assert await store.reserve(attempt.id, 8)


async def test_a_database_on_a_full_disk_is_refused_at_open_with_its_free_space(
    disk: SmallDisk,
) -> None:
    with anyio.fail_after(20):
        db = disk.path / "batch.sqlite"
        async with await Store.open(db) as store:
            await store.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
        disk.fill()
        with pytest.raises(DiskFull, match=r"is full \(.* free of"):
            async with await Store.open(db) as store:
                await store.init_batch(name="t", tag="zbatch:t", cap_buzz=200)
        disk.free()
        async with await Store.open(db) as store:
            assert (await store.budget()).cap_buzz == 100
            await store.init_batch(name="t", tag="zbatch:t", cap_buzz=200)
            assert (await store.budget()).cap_buzz == 200


def test_a_full_disk_stops_the_log_file_not_the_run(
    disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import structlog

    from runner import log as runner_log

    log_file = disk.path / "log.jsonl"
    configure_logging(json=True, log_file=log_file)
    try:
        structlog.get_logger().info("before")
        disk.fill()
        sink = runner_log._file_sink
        assert sink is not None
        if not disk.real:  # INJECTED: the sink's file refuses like a full disk

            class Full:
                def write(self, text: str) -> int:
                    raise OSError(errno.ENOSPC, "No space left on device")

                def flush(self) -> None:
                    raise OSError(errno.ENOSPC, "No space left on device")

                close = flush

            opened = sink._handle
            monkeypatch.setattr(sink, "_handle", Full())
            opened.close()
        for n in range(2000):  # more than the buffer and the space left: never raises
            structlog.get_logger().info("during", n=n, pad="x" * 100)
    finally:
        configure_logging(json=True)  # closes the file: a failed flush is swallowed
    assert log_file.read_text().startswith('{"event": "before"')
    disk.free()


# -- read-only -------------------------------------------------------------------------------


def test_a_read_only_out_folder_is_refused_before_anything_is_written(
    disk: SmallDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = disk.path / "out"
    out.mkdir()
    disk.read_only()
    try:
        with pytest.raises(ReadOnlyDisk, match="is on a read-only filesystem"):
            check_out_folder(out)
        with pytest.raises(ReadOnlyDisk, match="would be made in"):
            check_out_folder(out / "new" / "deeper")
        manifest = tmp_path / "m.yaml"
        manifest.write_text(MANIFEST.replace("out: out", f"out: {out}"))
        assert run_cli(str(manifest)) == 6
        assert "is on a read-only filesystem" in capsys.readouterr().err
        assert list(out.iterdir()) == []
        with pytest.raises(ReadOnlyDisk, match="read-only filesystem while writing"):
            atomic_write_bytes(out / "images" / "a.jpg", b"x")
    finally:
        disk.writable()
    assert run_cli(str(manifest)) == 0  # remounted read-write: the run goes through


# -- locked ----------------------------------------------------------------------------------

HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("UPDATE batch SET cap_buzz = cap_buzz")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def test_a_database_locked_by_another_program_is_refused_after_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process holds BEGIN EXCLUSIVE: a bounded wait, a clear message, exit 7,
    nothing changed; once it lets go the run goes through."""
    monkeypatch.setattr(local_faults, "BUSY_TIMEOUT_MS", 200)
    manifest = write_manifest(tmp_path)
    assert run_cli(str(manifest)) == 0
    db = tmp_path / "out" / "batch.sqlite"
    before = sha(db)

    async def open_and_write() -> None:
        with anyio.fail_after(20):
            async with await Store.open(db) as store:
                await store.init_batch(name="local", tag="zbatch:local", cap_buzz=5)

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(DatabaseLocked, match=r"is locked by another program \(waited"):
            anyio.run(open_and_write, backend="asyncio")
        capsys.readouterr()
        assert run_cli(str(manifest)) == 7
        err = capsys.readouterr().err
        assert "is locked by another program (waited 0.2 s)" in err
        assert "Traceback" not in err
    finally:
        holder.communicate("\n", timeout=20)
    assert sha(db) == before
    assert run_cli(str(manifest)) == 0


def test_a_second_run_on_the_same_out_gets_the_batch_lock_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path)
    (tmp_path / "out").mkdir()
    held = BatchLock(tmp_path / "out" / "batch.sqlite")
    held.acquire()  # what a running `zbatch run` holds
    try:
        assert run_cli(str(manifest)) == 7
    finally:
        held.release()
    assert "is in use by pid" in capsys.readouterr().err
    assert not (tmp_path / "out" / "batch.sqlite").exists()
    held.acquire()
    try:
        with pytest.raises(BatchInUse):
            BatchLock(tmp_path / "out" / "batch.sqlite").acquire()
    finally:
        held.release()


# -- damaged, newer --------------------------------------------------------------------------


def test_garbage_and_truncated_files_are_named_by_their_header(tmp_path: Path) -> None:
    db = tmp_path / "batch.sqlite"
    assert header_problem(db) is None  # missing: a new batch
    db.write_bytes(b"")
    assert header_problem(db) is None  # empty: a new batch
    db.write_bytes(b"SQLite for")
    assert header_problem(db) == "truncated to 10 bytes"
    db.write_bytes(b"PK\x03\x04" + bytes(200))
    assert str(header_problem(db)).startswith("not an SQLite database: it starts with b'PK")
    good = sqlite3.connect(db.with_name("g.sqlite"))
    good.execute("CREATE TABLE t (x)")
    good.executemany("INSERT INTO t VALUES (?)", [(b"x" * 3000,)] * 20)
    good.commit()
    good.close()
    data = db.with_name("g.sqlite").read_bytes()
    db.write_bytes(data)
    assert header_problem(db) is None
    db.write_bytes(data[: len(data) // 2])
    assert (
        header_problem(db)
        == f"truncated: {len(data) // 2} bytes of the {len(data)} its header records"
    )


@pytest.mark.parametrize("damage", ["garbage", "truncated", "malformed"])
def test_a_damaged_database_is_refused_untouched_with_the_way_out(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path)
    assert run_cli(str(manifest)) == 0
    capsys.readouterr()
    db = tmp_path / "out" / "batch.sqlite"
    data = db.read_bytes()
    if damage == "garbage":
        db.write_bytes(b"\x89PNG garbage" * 500)
    elif damage == "truncated":
        db.write_bytes(data[: len(data) // 2])
    else:  # every page after the first overwritten: the header is fine, the tables not
        db.write_bytes(data[:4096] + b"\xa5" * (len(data) - 4096))
    before = sha(db)
    assert run_cli(str(manifest)) == 7
    err = capsys.readouterr().err
    assert f"zbatch: error: {db} is damaged (" in err
    assert "zbatch run MANIFEST --adopt" in err
    assert "Traceback" not in err
    assert sha(db) == before  # refused untouched
    assert not list(db.parent.glob("batch.sqlite.damaged-*"))


def test_a_newer_schema_is_refused_and_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "out" / "batch.sqlite"

    async def make() -> None:
        async with await Store.open(db) as store:
            await store.init_batch(name="local", tag="zbatch:local", cap_buzz=5)

    async def reopen() -> None:
        await Store.open(db)

    anyio.run(make, backend="asyncio")
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    before = sha(db)
    expected = (
        f"batch.sqlite was written by a newer zbatch (schema {SCHEMA_VERSION + 1}, this zbatch"
        f" knows up to {SCHEMA_VERSION}); upgrade zbatch"
    )
    with pytest.raises(NewerSchema, match=expected.replace("(", r"\(").replace(")", r"\)")):
        anyio.run(reopen, backend="asyncio")
    assert run_cli(str(write_manifest(tmp_path))) == 7
    assert expected in capsys.readouterr().err
    assert sha(db) == before
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert check.execute("SELECT cap_buzz FROM batch").fetchone()[0] == 5
    check.close()


def test_translate_unwraps_groups_and_leaves_bugs_alone() -> None:
    full = OSError(28, "No space left on device", "/x/out/images/ab/.a.tmp")
    found = local_faults.local_failure(ExceptionGroup("tg", [full]))
    assert isinstance(found, DiskFull)
    assert "/x/out/images/ab" in str(found)
    locked = sqlite3.OperationalError("database is locked")
    assert isinstance(local_faults.local_failure(locked), DatabaseLocked)
    bad = sqlite3.OperationalError("file is not a database")
    bad.sqlite_errorname = "SQLITE_NOTADB"
    assert isinstance(local_faults.local_failure(bad), DatabaseDamaged)
    assert local_faults.local_failure(sqlite3.OperationalError("no such table: x")) is None
    assert local_faults.local_failure(ExceptionGroup("tg", [full, ValueError("bug")])) is None
