"""`Store.plan_rows` in bulk: chunk boundaries, keys met twice, one planned event per attempt."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runner.grid import store_rows
from runner.identity import PlanRow, external_id
from runner.manifest._load import parse_manifest
from runner.store import _plan as plan_module
from runner.store._store import Store
from tests.cells import planned_cell
from tests.services import StoreBackend
from tests.test_grid import PINNED_MANIFEST


def cell(n: int) -> PlanRow:
    return planned_cell(
        f"{(n * 7919) % 1000:032x}",  # not in grid order, as real (hashed) keys are not
        {"model": "turbo", "prompt": f"p{n}", "width": 64, "height": 64, "seed": n},
        variables={"n": str(n)},
        estimate_buzz=8,
    )


async def test_plan_across_chunks_matches_one_row_at_a_time(
    store_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell once, in grid order (`seq`), with attempt 1 planned and its one event."""
    monkeypatch.setattr(plan_module, "PLAN_CHUNK", 3)
    grid = [cell(n) for n in range(10)] + [cell(4)]  # cell 4 again, last: it keeps that place
    rows = store_backend.rows
    with anyio.fail_after(10):
        async with await store_backend.open() as store:
            await store.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
            first = await store.plan_rows(grid, max_attempts=3)
            again = await store.plan_rows([cell(n) for n in range(3, 12)], max_attempts=2)
            planned = await store.next_planned(100)
    assert (first.added, first.kept, first.removed) == (10, 1, 0)
    assert (again.added, again.kept, again.removed) == (2, 7, 3)
    assert [a.cell_key for a in planned] == [cell(n).key for n in range(3, 12)]
    seqs = {key: seq for key, seq in rows("SELECT key, seq FROM cells WHERE generation = 2")}
    assert [seqs[cell(n).key] for n in range(3, 12)] == list(range(9))
    assert rows("SELECT max_attempts FROM cells WHERE key = ?", cell(0).key) == [(3,)]
    attempts = rows("SELECT id, cell_key, attempt, external_id, state FROM attempts")
    assert len(attempts) == 12
    for _, key, number, recorded, state in attempts:
        assert (number, recorded, state) == (1, external_id(str(key), 1), "planned")
    events = rows("SELECT attempt_id, from_state, to_state FROM events ORDER BY id")
    assert sorted(events, key=lambda e: int(str(e[0]))) == [
        (attempt_id, None, "planned") for attempt_id, *_ in sorted(attempts)
    ]
    stored = rows("SELECT request, vars FROM cells WHERE key = ?", cell(7).key)
    assert stored == [
        (
            '{"height":64,"model":"turbo","prompt":"p7","seed":7,"width":64}',
            '{"n":"7"}',
        )
    ]


async def test_a_planned_batch_is_recorded_byte_for_byte_as_before(
    tmp_path: Path, store_backend: StoreBackend
) -> None:
    """The rows a plan writes (requests and vars as JSON text, prices, externalIds), pinned
    from the code before the bulk plan was optimized: a resumed batch must find its cells.
    Planned the way `zbatch run` plans them: `grid.store_rows` into `Store.plan_rows`."""
    manifest = parse_manifest(PINNED_MANIFEST, path=tmp_path / "pins.yaml")
    rows = store_backend.rows
    with anyio.fail_after(10):
        pinned_now = "2026-01-01T00:00:00.000+00:00"
        async with await store_backend.open(now=lambda: pinned_now) as store:
            await store.init_batch(name=manifest.name, tag="zbatch:pins-v1", cap_buzz=10**6)
            result = await store.plan_rows(store_rows(manifest), max_attempts=3)
    assert (result.added, result.kept, result.removed) == (228, 0, 0)
    cells = rows(
        "SELECT key, seq, replica, model, request, vars, estimate_buzz, max_attempts, generation"
        " FROM cells ORDER BY seq",
    )
    assert cells[0][4] == (
        '{"cfgScale":1,"height":512,"loras":{},"model":"turbo","negativePrompt":"blurry, calm",'
        '"outputFormat":"jpeg","prompt":"Ein Fuchs im Wald \\u2014 \\"quoted\\" \\\\ {literal}",'
        '"quantity":1,"sampleMethod":"euler","schedule":"simple","seed":769327706,"steps":9,'
        '"width":512}'
    )
    assert cells[0][5] == '{"animal":"Fuchs","mood":"calm","place":"Wald"}'
    assert _sha256(cells) == "f117f549d409caf3eb9941cd9e716dbfa9fac45e1a2f2e1a7afb373044366189"
    attempts = rows(
        "SELECT a.cell_key, a.attempt, a.external_id, a.state, a.updated_at"
        " FROM attempts a JOIN cells c ON c.key = a.cell_key ORDER BY c.seq",
    )
    assert _sha256(attempts) == "fa4b062416e05b889f8d96a1d2046256f82ee5b92ffa399810a4da911d8da31a"
    events = rows(
        "SELECT COUNT(*), COUNT(DISTINCT attempt_id) FROM events"
        " WHERE to_state = 'planned' AND from_state IS NULL",
    )
    assert events == [(228, 228)]


def _sha256(found: list[tuple[object, ...]]) -> str:
    return hashlib.sha256(repr(found).encode()).hexdigest()


async def test_a_plan_that_fails_half_way_leaves_nothing_and_the_next_one_plans_all(
    store_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan is one transaction: an error (or Ctrl-C) after some merges rolls all of it
    back, puts FULL sync back and drops the scratch table; planning again records every
    cell once."""
    monkeypatch.setattr(plan_module, "PLAN_CHUNK", 4)
    monkeypatch.setattr(plan_module, "PLAN_HANDOFF", 2)

    def failing() -> Iterator[PlanRow]:
        for n in range(10):
            yield cell(n)
        raise RuntimeError("the manifest's prompt file went away")

    rows = store_backend.rows
    with anyio.fail_after(10):
        async with await store_backend.open() as store:
            await store.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
            with pytest.raises(RuntimeError, match="went away"):
                await store.plan_rows(failing(), max_attempts=2)
            assert rows("SELECT COUNT(*) FROM cells") == [(0,)]
            with anyio.move_on_after(0) as scope:  # cancelled at its first await
                await store.plan_rows([cell(n) for n in range(10)], max_attempts=2)
            assert scope.cancelled_caught
            again = await store.plan_rows([cell(n) for n in range(10)], max_attempts=2)
            scratch = await _scratch_left(store, store_backend.name)
    assert (again.added, again.kept, again.removed) == (10, 0, 0)
    assert scratch == SCRATCH_GONE[store_backend.name]
    assert rows("SELECT COUNT(*), COUNT(DISTINCT cell_key) FROM attempts") == [(10, 10)]
    assert rows("SELECT COUNT(*) FROM events") == [(10,)]
    assert rows("SELECT generation FROM batch") == [(1,)]


# SQLite: synchronous FULL (2), and the scratch database `plan_stage` detached (a rebuilt
# table's rename makes SQLite attach an empty `temp`, so the count is by name);
# PostgreSQL: no temporary table `plan_rows` left in the session.
SCRATCH_GONE = {"sqlite": [2, 0], "postgresql": [True]}


async def _scratch_left(store: Store, backend: str) -> list[object]:
    if backend == "sqlite":
        return [
            await _one(store, "PRAGMA synchronous"),
            await _one(
                store, "SELECT COUNT(*) FROM pragma_database_list WHERE name = 'plan_stage'"
            ),
        ]
    return [await _one(store, "SELECT to_regclass('pg_temp.plan_rows') IS NULL")]


async def _one(store: Store, sql: str) -> object:
    row = await store._read(lambda db: db.execute(sql).fetchone())
    assert row is not None
    return row[0]


KILLED_PLAN = """
import sys, anyio
from pathlib import Path
from runner.store import _plan as plan_module
from runner.store import open_store
from tests.test_store_plan import cell

plan_module.PLAN_CHUNK = 50
plan_module.PLAN_HANDOFF = 10

def cells(flag):
    for n in range(300):
        if n == 200:
            flag.write_text("inside the plan")
            while True:
                pass  # SIGKILLed here, inside the plan's transaction
        yield cell(n)

async def main():
    location, flag = sys.argv[1], Path(sys.argv[2])
    async with await open_store(location) as store:
        await store.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
        await store.plan_rows(cells(flag), max_attempts=2)

anyio.run(main)
"""


async def test_a_plan_killed_half_way_is_planned_whole_by_the_next_run(
    tmp_path: Path, store_backend: StoreBackend
) -> None:
    """kill -9 inside the plan, its transaction open: the next open finds no cell (and a
    database it accepts), and the next plan records each cell once."""
    rows = store_backend.rows
    await anyio.to_thread.run_sync(_plan_and_kill, str(store_backend.location), tmp_path / "flag")
    if store_backend.name == "postgresql":  # the server ends the killed client's session
        await anyio.to_thread.run_sync(_sessions_ended, store_backend)
    with anyio.fail_after(10):
        async with await store_backend.open() as store:
            assert await _one(store, "SELECT COUNT(*) FROM cells") == 0
            result = await store.plan_rows([cell(n) for n in range(300)], max_attempts=2)
    assert (result.added, result.kept, result.removed) == (300, 0, 0)
    assert rows("SELECT COUNT(*), COUNT(DISTINCT external_id) FROM attempts") == [(300, 300)]


def _plan_and_kill(location: str, flag: Path) -> None:
    """Start the planning child, SIGKILL it once it is inside the plan; always reap it."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_PLAN, location, str(flag)], cwd=Path(__file__).parent.parent
    )
    try:
        deadline = time.monotonic() + 30
        while not flag.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert flag.exists(), f"the planning child did not get there ({child.poll()})"
    finally:
        child.kill()
        child.wait()


def _sessions_ended(backend: StoreBackend) -> None:
    """Wait (30 s at most) until no other session is connected to the test's database:
    PostgreSQL ends a killed client's session, and its lock, when it reads the closed socket."""
    sql = (
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + 30
    while backend.rows(sql) != [(0,)]:
        assert time.monotonic() < deadline, "the killed client's session is still open"
        time.sleep(0.05)
