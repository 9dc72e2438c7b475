"""`Store.plan` in bulk: chunk boundaries, keys met twice, one planned event per new attempt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from runner import store as store_module
from runner.records import CellRow, external_id_for
from runner.store import Store


def cell(n: int) -> CellRow:
    return CellRow(
        key=f"{(n * 7919) % 1000:032x}",  # not in grid order, as real (hashed) keys are not
        replica=0,
        model="turbo",
        request={"model": "turbo", "prompt": f"p{n}", "width": 64, "height": 64, "seed": n},
        vars={"n": str(n)},
        estimate_buzz=8,
    )


def rows(db_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(db_path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


async def test_plan_across_chunks_matches_one_row_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell once, in grid order (`seq`), with attempt 1 planned and its one event."""
    monkeypatch.setattr(store_module, "PLAN_CHUNK", 3)
    grid = [cell(n) for n in range(10)] + [cell(4)]  # cell 4 again, last: it keeps that place
    path = tmp_path / "batch.sqlite"
    with anyio.fail_after(10):
        async with await Store.open(path) as store:
            await store.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
            first = await store.plan(grid, max_attempts=3)
            again = await store.plan([cell(n) for n in range(3, 12)], max_attempts=2)
            planned = await store.next_planned(100)
    assert (first.added, first.kept, first.removed) == (10, 1, 0)
    assert (again.added, again.kept, again.removed) == (2, 7, 3)
    assert [a.cell_key for a in planned] == [cell(n).key for n in range(3, 12)]
    seqs = {key: seq for key, seq in rows(path, "SELECT key, seq FROM cells WHERE generation = 2")}
    assert [seqs[cell(n).key] for n in range(3, 12)] == list(range(9))
    assert rows(path, "SELECT max_attempts FROM cells WHERE key = ?", cell(0).key) == [(3,)]
    attempts = rows(path, "SELECT id, cell_key, attempt, external_id, state FROM attempts")
    assert len(attempts) == 12
    for _, key, number, external_id, state in attempts:
        assert (number, external_id, state) == (1, external_id_for(str(key), 1), "planned")
    events = rows(path, "SELECT attempt_id, from_state, to_state FROM events ORDER BY id")
    assert sorted(events, key=lambda e: int(str(e[0]))) == [
        (attempt_id, None, "planned") for attempt_id, *_ in sorted(attempts)
    ]
    stored = rows(path, "SELECT request, vars FROM cells WHERE key = ?", cell(7).key)
    assert stored == [
        (
            '{"height":64,"model":"turbo","prompt":"p7","seed":7,"width":64}',
            '{"n":"7"}',
        )
    ]
