"""The PostgreSQL store's own guarantees: the dialect, the schema, the refusals at open, the
cap across two stores on one database, `zbatch run --store`, and no password anywhere.

The store's behaviour on both backends is tests/test_store*.py (`store_backend`, whose
PostgreSQL runs are marked `postgresql`: `make test-pg`); these are what only PostgreSQL has,
and `make test` runs them.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest

from runner.api._client import Client
from runner.cli._main import main
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app
from runner.errors import BatchUnusable, CapReached, NewerSchema
from runner.manifest._load import parse_manifest
from runner.ops._run import RunOverrides, run_batch
from runner.store import PostgresStore, open_store, redact, tally
from runner.store._dialect import postgres
from runner.store._migrations import MIGRATIONS, SCHEMA_VERSION
from runner.store._pg_migrations import PG_MIGRATIONS
from tests.cells import turbo_cell
from tests.services import PostgresCluster, free_port

SECRET = "s3cret-Pa55word-zbatch"


@pytest.fixture
def database(pg_cluster: PostgresCluster) -> Iterator[str]:
    with pg_cluster.new_database() as url:
        yield url


def test_the_dialect_rewrites_placeholders_once_and_leaves_quoted_text_alone() -> None:
    sql = "SELECT '?', \"a?\", x FROM t WHERE y = ? AND z LIKE 'a%' AND w % 2 = ?"
    assert postgres(sql, with_params=True) == (
        "SELECT '?', \"a?\", x FROM t WHERE y = %s AND z LIKE 'a%%' AND w %% 2 = %s"
    )
    assert postgres("SELECT 5 % 2", with_params=False) == "SELECT 5 % 2"
    assert postgres("BEGIN IMMEDIATE", with_params=False) == "BEGIN"
    assert postgres(sql, with_params=True) is postgres(sql, with_params=True)  # cached


def test_the_migrations_are_numbered_alike_on_both() -> None:
    assert len(PG_MIGRATIONS) == len(MIGRATIONS) == SCHEMA_VERSION


def test_redact_keeps_user_host_port_database_only() -> None:
    url = f"postgresql://zb:{SECRET}@db.example:5433/batches?sslpassword={SECRET}&x=1"
    assert redact(url) == "postgresql://zb@db.example:5433/batches"
    assert redact(f"postgresql://zb:{SECRET}@h:port/db") == "postgresql://zb@h/db"


def test_a_sqlite_batch_never_imports_the_postgresql_driver(tmp_path: Path) -> None:
    """psycopg is an extra (`zbatch[postgresql]`): a batch in OUT/batch.sqlite runs without."""
    check = (
        "import sys, anyio; from pathlib import Path; from runner.store import open_store\n"
        "async def main():\n"
        f"    async with await open_store(Path({str(tmp_path / 'b.sqlite')!r})) as s:\n"
        "        await s.init_batch(name='t', tag='zbatch:t', cap_buzz=1)\n"
        "anyio.run(main); print('psycopg' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.stdout.strip() == "False"


async def test_a_new_database_gets_the_schema_and_its_version(database: str) -> None:
    async with await PostgresStore.open_url(database) as store:
        await store.init_batch(name="t", tag="zbatch:t", cap_buzz=10)
    with psycopg.connect(database) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {
            r[0]
            for r in db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
    assert tables == {"batch", "cells", "attempts", "images", "events", "run_settings",
                      "workers", "schema_version"}  # fmt: skip


async def test_a_newer_schema_is_refused_and_left_as_it_was(database: str) -> None:
    async with await PostgresStore.open_url(database):
        pass
    with psycopg.connect(database, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(NewerSchema, match="newer zbatch"):
        await PostgresStore.open_url(database)
    with psycopg.connect(database) as db:
        version = db.execute("SELECT version FROM schema_version").fetchall()
    assert version == [(SCHEMA_VERSION + 1,)]


async def test_synchronous_commit_off_is_refused(database: str) -> None:
    """An intent must be durable before its request leaves."""
    name = database.rsplit("/", 1)[1]
    with psycopg.connect(database, autocommit=True) as db:
        db.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
    with pytest.raises(BatchUnusable, match="synchronous_commit = off"):
        await PostgresStore.open_url(database)


async def test_a_reader_sees_the_batch_and_cannot_write(database: str) -> None:
    async with await PostgresStore.open_url(database) as store:
        await store.init_batch(name="t", tag="zbatch:t", cap_buzz=10)
        await store.plan_rows([turbo_cell(1, estimate_buzz=8)], max_attempts=1)
        async with store.reader() as reader:
            assert (await reader.counts()) == {"planned": 1}
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await reader.cancel_batch("no")


async def test_an_unreachable_server_is_refused_without_its_password() -> None:
    url = f"postgresql://zb:{SECRET}@127.0.0.1:{free_port()}/nowhere?connect_timeout=5"
    with pytest.raises(BatchUnusable) as caught:
        await open_store(url)
    assert "postgresql://zb@127.0.0.1:" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


# -- the cap across workers ---------------------------------------------------------------


def test_the_cap_holds_across_two_stores_reserving_at_once(database: str) -> None:
    """Two stores on one database (two workers' connections), each on a thread and an event
    loop of its own, reserve their own attempts at once, one by one and in groups: the
    ledger row's lock serialises them, so exactly what the cap allows is reserved."""
    cap, price, cells = 1_000, 10, 300

    async def prepare() -> list[int]:
        async with await PostgresStore.open_url(database) as store:
            await store.init_batch(name="t", tag="zbatch:t", cap_buzz=cap)
            await store.plan_rows([turbo_cell(i, estimate_buzz=price) for i in range(cells)],
                                  max_attempts=1)  # fmt: skip
            return [a.id for a in await store.next_planned(cells)]

    ids = anyio.run(prepare)
    start = threading.Barrier(2)
    granted: dict[int, list[int]] = {}

    async def worker(me: int) -> None:
        mine = ids[me::2]
        async with await PostgresStore.open_url(database, lock=False) as store:
            await anyio.to_thread.run_sync(start.wait)
            got: list[int] = []
            for i in range(0, len(mine), 5):
                if i % 10 == 0:  # one by one
                    got += [a for a in mine[i : i + 5] if await store.reserve(a, price)]
                else:  # a group in one transaction
                    got += await store.reserve_many([(a, price) for a in mine[i : i + 5]])
            granted[me] = got

    threads = [threading.Thread(target=anyio.run, args=(worker, me)) for me in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(granted) == {0, 1}, "a worker failed"
    reserved = granted[0] + granted[1]
    assert len(reserved) == len(set(reserved)) == cap // price
    with psycopg.connect(database) as db:
        committed = db.execute("SELECT committed_buzz FROM batch").fetchall()
        states = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(reserved_buzz), 0) FROM attempts"
            " WHERE state = 'submitting'"
        ).fetchall()
    assert committed == [(cap,)]
    assert states == [(cap // price, cap)]


# -- zbatch run --store ----------------------------------------------------------------------


def test_zbatch_run_keeps_its_record_in_postgresql_and_never_shows_the_password(
    tmp_path: Path,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ZBATCH_STORE with a password (the test cluster trusts loopback, so any password
    opens it): the batch runs, its record is in PostgreSQL and not in OUT, and neither the
    output, the log, the metadata nor the record holds the password."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "name: pg\nout: out\nbudget: 40\ndefaults: {size: 64x64}\n"
        "grid: {prompt: p, seed: {count: 3}}\n",
        encoding="utf-8",
    )
    with_password = database.replace("postgres@", f"postgres:{SECRET}@")
    monkeypatch.setenv("ZBATCH_STORE", with_password)
    code = main(["run", str(manifest), "--emulator", "--time-scale", "0", "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    out = tmp_path / "out"
    assert not (out / "batch.sqlite").exists()
    with psycopg.connect(database) as db:
        states = db.execute("SELECT state, COUNT(*) FROM attempts GROUP BY state").fetchall()
        images = db.execute("SELECT path FROM images WHERE state = 'downloaded'").fetchall()
        dump = json.dumps(
            [db.execute(f"SELECT * FROM {t}").fetchall() for t in ("batch", "events")],
            default=str,
        )
    assert states == [("succeeded", 3)]
    assert len(images) == 3
    assert all((out / str(path)).is_file() for (path,) in images)
    every_file = "".join(
        p.read_text(encoding="utf-8", errors="replace") for p in out.rglob("*") if p.is_file()
    )
    for text in (printed.out, printed.err, every_file, dump):
        assert SECRET not in text


def test_zbatch_run_refuses_a_store_that_is_not_a_url_without_repeating_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path / "m.yaml"), "--store", f"mysql://u:{SECRET}@h/db"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "argument --store: takes a postgresql://" in err
    assert SECRET not in err


# -- the same run on both: every read answers the same ---------------------------------------

SAME_RUN = """
name: same
out: {out}
budget: 60
seed_base: 5
defaults: {{size: 64x64, quantity: 2}}
grid:
  model: [turbo, base]
  prompt: ["a fox", "a bowl of ramen", "a lighthouse"]
  seed: {{count: 3}}
limits: {{in_flight: 4, submit_per_s: 1000, downloads: 2}}
"""


async def _run_and_read(tmp_path: Path, name: str, store: str | None) -> dict[str, object]:
    """Run the manifest on the emulator (seeded, one outcome per cell whatever the timing),
    then read the record back through every read the commands use."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(SAME_RUN.format(out=tmp_path / name), encoding="utf-8")
    manifest = parse_manifest(path.read_text(), path=path)
    app = make_app(EmulatorConfig(time_scale=0, seed=11, blocked_words=frozenset({"ramen"})))
    fast = {"poll_min_s": 0.001, "backoff_base_s": 0.001, "backoff_cap_s": 0.01}
    with anyio.fail_after(60):
        async with Client(
            base_url="http://emulator", token="t", transport=EmulatorTransport(app)
        ) as client:
            try:
                await run_batch(manifest, client, tuning=fast, overrides=RunOverrides(store=store))
            except CapReached:
                pass  # the budget is smaller than the grid: the cap stops it, on both
        location = store or manifest.out / "batch.sqlite"
        async with await open_store(location, read_only=True) as s:
            downloaded = await s.downloaded_images((0, -1), 100)
            dataset = []
            async with contextlib.aclosing(s.dataset_images(("downloaded", "lost"), chunk=5)) as it:
                async for part in it:
                    assert len(part) <= 5
                    dataset += [(i.path, i.sha256, i.cell_key, i.index) for i in part]
            gallery = await s.gallery_cells(all_cells=True)
            return {
                "budget": await s.budget(),
                "counts": await s.counts(),
                "cell_counts": await s.cell_counts(),
                "unsubmitted": await s.unsubmitted(),
                "failures": await s.failure_reasons(10),
                "refunds": (await s.activity()).refunded_buzz,
                "vars": await s.var_names(),
                "tally": await tally(s),
                "dataset": dataset,
                "downloaded": sorted((i.cell_key, i.index, i.path, i.sha256) for i in downloaded),
                "gallery": [
                    (
                        c.key,
                        c.seq,
                        c.state,
                        c.charged_buzz,
                        [(i.index, i.state, i.sha256) for i in c.images],
                    )
                    for c in gallery
                ],  # fmt: skip
            }


async def test_the_same_run_reads_the_same_on_both_backends(tmp_path: Path, database: str) -> None:
    on_sqlite = await _run_and_read(tmp_path, "sqlite", None)
    on_postgresql = await _run_and_read(tmp_path, "postgresql", database)
    assert on_sqlite["counts"]  # the run did something
    assert on_postgresql == on_sqlite


async def test_a_lost_connection_is_a_clear_error_and_the_next_open_resumes(
    database: str,
) -> None:
    """The server ends the store's session (a restart, a cut): the next transition fails
    as BatchUnusable, without the password; what was committed is there on reopening."""
    with_password = database.replace("postgres@", f"postgres:{SECRET}@")
    store = await PostgresStore.open_url(with_password)
    try:
        await store.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
        await store.plan_rows([turbo_cell(i, estimate_buzz=10) for i in range(3)], max_attempts=1)
        first, second, _ = await store.next_planned(3)
        assert await store.reserve(first.id, 10)
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(BatchUnusable, match="lost the connection to postgresql://") as lost:
            await store.reserve(second.id, 10)
        assert SECRET not in str(lost.value)
    finally:
        await store.close()
    async with await PostgresStore.open_url(database) as again:
        assert (await again.budget()).committed_buzz == 10
        assert await again.counts() == {"planned": 2, "submitting": 1}
