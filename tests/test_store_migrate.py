"""A batch.sqlite the previous release wrote (schema 5) opens, migrates, and runs on.

Migration 7 rebuilds `attempts` with the externalId derived (a generated column, no UNIQUE
index of its own): every attempt keeps its id, state, Buzz and externalId, the images and
events that point at it still do, and the next transitions work on it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from runner.errors import StoreError
from runner.identity import external_id
from runner.store._migrations import MIGRATIONS, SCHEMA_VERSION
from runner.store._open import connect
from runner.store._rows import AttemptState, ImageOutcome
from runner.store._store import Store

KEYS = [f"{n:032x}" for n in range(3)]


def release_5_database(path: Path) -> None:
    """A record as schema 5 left it: three cells; attempt 1 of the first failed and its
    retry succeeded with one image; the second submitting (its Buzz reserved); the third
    planned."""
    raw = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:5], start=1):
        raw.executescript(f"BEGIN; {script} PRAGMA user_version = {number}; COMMIT;")
    raw.executescript("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;")
    raw.execute(
        "INSERT INTO batch (id, name, tag, cap_buzz, committed_buzz, generation, created_at,"
        " revision) VALUES (1, 't', 'zbatch:t', 100, 5, 1, 't0', 1)"
    )
    for seq, key in enumerate(KEYS):
        raw.execute(
            "INSERT INTO cells (key, seq, replica, model, request, vars, estimate_buzz,"
            " max_attempts, generation) VALUES (?, ?, 0, 'turbo', ?, '{}', 2, 2, 1)",
            (key, seq, f'{{"model":"turbo","prompt":"p{seq}","seed":{seq}}}'),
        )
    attempts = [
        (1, KEYS[0], 1, "failed", 0, 0, "wf-1"),
        (2, KEYS[0], 2, "succeeded", 0, 3, "wf-2"),
        (3, KEYS[1], 1, "submitting", 2, 0, None),
        (4, KEYS[2], 1, "planned", 0, 0, None),
    ]
    for attempt_id, key, number, state, reserved, charged, workflow in attempts:
        raw.execute(
            "INSERT INTO attempts (id, cell_key, attempt, external_id, state, reserved_buzz,"
            " charged_buzz, workflow_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 't1')",
            (attempt_id, key, number, external_id(key, number), state, reserved, charged,
             workflow),
        )  # fmt: skip
        raw.execute(
            "INSERT INTO events (at, attempt_id, to_state) VALUES ('t1', ?, ?)",
            (attempt_id, state),
        )
    raw.execute(
        "INSERT INTO images (attempt_id, idx, blob_id, state, path, sha256, updated_at)"
        " VALUES (2, 0, 'blob-2', 'downloaded', 'images/00/x_0.jpg', ?, 't2')",
        ("0" * 64,),
    )
    raw.close()


def table(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return [tuple(r) for r in db.execute(sql)]
    finally:
        db.close()


ATTEMPTS = (
    "SELECT id, cell_key, attempt, external_id, state, reserved_buzz, charged_buzz,"
    " workflow_id FROM attempts ORDER BY id"
)


async def test_a_release_5_record_migrates_and_runs_on(tmp_path: Path) -> None:
    path = tmp_path / "batch.sqlite"
    release_5_database(path)
    before = table(path, ATTEMPTS)
    images = table(path, "SELECT * FROM images")
    with anyio.fail_after(10):
        async with await Store.open(path) as store:
            planned = await store.next_planned(5)
            assert [(a.id, a.external_id) for a in planned] == [(4, external_id(KEYS[2], 1))]
            # the next transitions work on the rebuilt table: the intent left submitting
            # is sent and ends; the planned one is reserved
            await store.mark_running(3, "wf-3", 2)
            await store.mark_finished(
                3, AttemptState.SUCCEEDED, charged_buzz=2, images=[ImageOutcome(0, "b", True)]
            )
            assert await store.reserve_many([(4, 2)]) == [4]
    assert table(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    after = table(path, ATTEMPTS)
    assert after[:2] == before[:2]  # ids, keys, states, Buzz and externalIds kept
    assert [r[3] for r in after] == [external_id(r[1], r[2]) for r in after]  # type: ignore[arg-type]
    assert table(path, "SELECT * FROM images WHERE attempt_id = 2") == images
    assert table(path, "SELECT committed_buzz FROM batch") == [(5 + 2 - 2 + 2,)]
    assert table(path, "PRAGMA foreign_key_check") == []
    indexes = table(path, "SELECT name FROM sqlite_schema WHERE tbl_name = 'attempts'")
    assert sorted(str(r[0]) for r in indexes) == [
        "attempts", "attempts_by_owner", "attempts_by_state", "sqlite_autoindex_attempts_1",
    ]  # fmt: skip  # the table, its state and owner indexes, UNIQUE (cell_key, attempt)


def test_a_migration_that_would_break_a_reference_changes_nothing(tmp_path: Path) -> None:
    """An image whose attempt is missing (a record damaged by hand) stops the first
    migration before its COMMIT: the record stays at schema 5, as it was."""
    path = tmp_path / "batch.sqlite"
    release_5_database(path)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(
        "INSERT INTO images (attempt_id, idx, state, updated_at) VALUES (99, 0, 'pending', 't')"
    )  # foreign keys are off on this connection (SQLite's default)
    raw.close()
    before = table(path, "SELECT * FROM attempts ORDER BY id")
    with pytest.raises(StoreError, match="migration 6 would leave 1 broken reference"):
        connect(path, check=False)
    assert table(path, "PRAGMA user_version") == [(5,)]
    assert table(path, "SELECT * FROM attempts ORDER BY id") == before


def test_a_stored_external_id_that_is_not_the_derived_one_stops_migration_7(
    tmp_path: Path,
) -> None:
    """Were a stored externalId another spelling, deriving it would look for the batch's
    in-flight workflows under a name the service never saw: migration 7 refuses the record
    instead, which stays at schema 6 with its attempts as they were."""
    path = tmp_path / "batch.sqlite"
    release_5_database(path)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("UPDATE attempts SET external_id = 'zb-other-spelling' WHERE id = 3")
    raw.close()
    before = table(path, "SELECT * FROM attempts ORDER BY id")
    with pytest.raises(StoreError, match="migration 7 refused this record .*not_derived"):
        connect(path, check=False)
    assert table(path, "PRAGMA user_version") == [(6,)]
    assert table(path, "SELECT * FROM attempts ORDER BY id") == before
