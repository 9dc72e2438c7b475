"""The operations' store transitions, and `zbatch retry / cancel / verify / run --adopt` as
commands over a real socket, with their exit codes."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import anyio
import psycopg
import pytest
import structlog

from runner.cli._main import main
from runner.emulator import EmulatorConfig, running_server
from runner.errors import StoreError
from runner.identity import PlanRow
from runner.store._migrations import MIGRATIONS, SCHEMA_VERSION
from runner.store._rows import AttemptState, ImageOutcome
from runner.store._settings import RunSettings
from runner.store._store import Store
from tests.cells import turbo_cell
from tests.e2e.ops_harness import LIMITS, MANIFEST
from tests.services import StoreBackend


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """`main` points structlog at this test's captured stderr; later tests must not use it."""
    yield
    structlog.reset_defaults()


def cell(n: int) -> PlanRow:
    return turbo_cell(n, estimate_buzz=2)


@pytest.fixture
async def store(store_backend: StoreBackend) -> AsyncIterator[Store]:
    s = await store_backend.open()
    await s.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
    await s.plan_rows([cell(i) for i in range(4)], max_attempts=1)
    try:
        yield s
    finally:
        await s.close()


async def finish(
    store: Store, n: int, outcome: AttemptState, images: Sequence[ImageOutcome] = ()
) -> int:
    (a,) = [x for x in await store.next_planned(10) if x.cell_key == cell(n).key]
    assert await store.reserve(a.id, 2)
    await store.mark_running(a.id, f"wf-{n}", 2)
    charged = 2 if outcome is AttemptState.SUCCEEDED else 0
    await store.mark_finished(a.id, outcome, charged_buzz=charged, images=images)
    return a.id


async def test_retry_cells_chooses_by_state_and_narrows_what_may_be_submitted(store: Store) -> None:
    """Only failed and lost cells get attempt 2; only they are handed out afterwards."""
    with anyio.fail_after(10):
        await finish(store, 0, AttemptState.FAILED)
        lost = [ImageOutcome(0, "b0", deliverable=False, reason="not available")]
        await finish(store, 1, AttemptState.SUCCEEDED, images=lost)
        await finish(store, 2, AttemptState.BLOCKED)
        plan = await store.retry_cells(states=("failed", "lost"), cap_buzz=500)
        assert [(c.cell_key, c.attempt, c.was) for c in plan.chosen] == [
            (cell(0).key, 2, "failed"),
            (cell(1).key, 2, "lost"),
        ]
        handed = await store.next_planned(10)
        assert {a.cell_key for a in handed} == {cell(0).key, cell(1).key}  # not cell 3 (planned)
        assert (await store.budget()).cap_buzz == 500
        named = await store.retry_cells(states=(), cells=(cell(2).key, cell(3).key))
        assert [c.was for c in named.chosen] == ["blocked"]
        assert "still planned" in named.skipped[cell(3).key]


async def test_retry_refuses_blocked_by_state(store: Store) -> None:
    with anyio.fail_after(10), pytest.raises(StoreError, match="cannot retry state"):
        await store.retry_cells(states=("blocked",))


async def test_cancel_batch_cancels_planned_and_stops_handing_out(store: Store) -> None:
    with anyio.fail_after(10):
        assert await store.cancel_batch("test") == 4
        assert await store.next_planned(10) == []
        assert await store.canceled_at() is not None
        assert await store.cancel_batch("test") == 0  # idempotent
        plan = await store.retry_cells(states=("canceled",))
        assert plan.canceled_lifted
        assert len(plan.chosen) == 4
        assert await store.canceled_at() is None
        assert len(await store.next_planned(10)) == 4


async def test_adopt_workflow_records_the_charge_and_continues_numbering(store: Store) -> None:
    with anyio.fail_after(10):
        key = cell(0).key
        got = await store.adopt_workflow(key, 2, "wf-a2", 7)  # attempt 1 never reached it
        assert got.status == "adopted"
        assert got.attempt_id is not None
        assert (await store.budget()).committed_buzz == 7
        first = [a for a in await store.next_planned(10) if a.cell_key == key]
        assert first == []  # attempt 1 was superseded: canceled, never submitted
        assert (await store.adopt_workflow(key, 2, "wf-a2", 7)).status == "known"
        assert (await store.adopt_workflow(key, 2, "wf-other", 7)).status == "conflict"
        assert (await store.adopt_workflow("f" * 32, 1, "wf-x", 1)).status == "unknown"
        assert (await store.budget()).committed_buzz == 7


async def test_image_repaired_needs_the_same_sha_and_missing_becomes_lost(store: Store) -> None:
    with anyio.fail_after(10):
        images = [ImageOutcome(0, "b0", deliverable=True), ImageOutcome(1, "b1", deliverable=True)]
        attempt = await finish(store, 0, AttemptState.SUCCEEDED, images=images)
        for index in (0, 1):
            await store.mark_downloaded(
                attempt, index, path=f"p{index}", sha256="ab" * 32, size_bytes=3, width=64,
                height=64,
            )  # fmt: skip
        await store.mark_image_repaired(attempt, 0, "ab" * 32)
        with pytest.raises(StoreError, match="not downloaded"):
            await store.mark_image_repaired(attempt, 0, "cd" * 32)
        await store.mark_image_missing(attempt, 1, "gone")
        assert [i.index for i in await store.downloaded_images((0, -1), 10)] == [0]
        assert (await store.counts())["image:lost"] == 1


async def test_run_settings_are_kept_and_replaced(store: Store) -> None:
    with anyio.fail_after(10):
        assert await store.run_settings() is None  # nothing saved yet
        first = RunSettings(captions="txt", in_flight=3, submit_per_s=0.5, downloads=2, attempts=4)
        await store.save_run_settings(first)
        assert await store.run_settings() == first
        second = RunSettings(captions="none", in_flight=9, submit_per_s=7, downloads=1, attempts=1)
        await store.save_run_settings(second)
        assert await store.run_settings() == second
        # the table checks what it holds, on either database
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.IntegrityError)):
            await store.save_run_settings(replace(second, captions="json"))


async def test_a_schema_3_record_migrates_without_settings(tmp_path: Path) -> None:
    """A record made before migration 4 opens, gains the table, and has no settings."""
    db = tmp_path / "batch.sqlite"
    raw = sqlite3.connect(db)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        raw.executescript(f"BEGIN; {script} PRAGMA user_version = {number}; COMMIT;")
    raw.execute(
        "INSERT INTO batch (id, name, tag, cap_buzz, created_at)"
        " VALUES (1, 't', 'zbatch:t', 9, 'x')"
    )
    raw.commit()
    raw.close()
    with anyio.fail_after(10):
        async with await Store.open(db) as store:
            assert await store.run_settings() is None
            assert (await store.batch_info()).tag == "zbatch:t"
            kept = RunSettings(captions="txt", in_flight=1, submit_per_s=1, downloads=1, attempts=1)
            await store.save_run_settings(kept)
        async with await Store.open(db, read_only=True) as reader:
            assert await reader.run_settings() == kept
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()


def test_run_records_the_manifest_settings(tmp_path: Path) -> None:
    """`zbatch run` saves the manifest's captions, limits and attempts, not its flags'."""
    path = tmp_path / "m.yaml"
    path.write_text(
        MANIFEST.format(
            budget=1000,
            seeds=1,
            attempts=2,
            size="64x64",
            model="turbo",
            limits="{in_flight: 3, submit_per_s: 40, downloads: 2}",
            captions="txt",
        )
    )
    argv = ["run", str(path), "--emulator", "--time-scale", "0", "--quiet", "--concurrency", "7"]
    assert main(argv) == 0
    db = sqlite3.connect(tmp_path / "out" / "batch.sqlite")
    found = db.execute(
        "SELECT captions, in_flight, submit_per_s, downloads, attempts FROM run_settings"
    ).fetchall()
    db.close()
    assert found == [("txt", 3, 40.0, 2, 2)]


# -- the commands, over a real socket --------------------------------------------------


def write_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        MANIFEST.format(
            budget=1000,
            seeds=1,
            attempts=1,
            size="64x64",
            model="turbo",
            limits=LIMITS,
            captions="none",
        )
    )
    return path


def test_commands_and_their_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run, verify (0 / 5), verify --repair, retry (nothing), cancel, run --adopt."""
    monkeypatch.setenv("CIVITAI_API_TOKEN", "cli-token")
    manifest, out = write_manifest(tmp_path), tmp_path / "out"
    with running_server(EmulatorConfig(time_scale=0)) as url:
        assert main(["run", str(manifest), "--api-url", url, "--quiet"]) == 0
        assert main(["verify", str(out)]) == 0
        db = sqlite3.connect(out / "batch.sqlite")
        (path,) = db.execute("SELECT path FROM images ORDER BY path LIMIT 1").fetchone()
        db.close()
        (out / path).unlink()
        assert main(["verify", str(out)]) == 5
        assert main(["verify", str(out), "--repair", "--api-url", url]) == 0
        assert main(["verify", str(out)]) == 0
        assert main(["retry", str(out), "--api-url", url, "--quiet"]) == 0  # nothing to retry
        assert main(["retry", str(out), "--cell", "f" * 32, "--api-url", url, "--quiet"]) == 2
        assert main(["cancel", str(out), "--api-url", url]) == 0
        for name in ("batch.sqlite", "batch.sqlite-wal", "batch.sqlite-shm"):
            (out / name).unlink(missing_ok=True)
        assert main(["run", str(manifest), "--api-url", url, "--quiet", "--adopt"]) == 0
    assert main(["verify", str(out)]) == 0
    assert main(["retry", str(tmp_path / "nowhere"), "--quiet"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["retry", str(out), "--state", "blocked"])  # only by name, with --cell
    assert exc.value.code == 2


async def test_cancel_while_a_runner_holds_the_batch_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CIVITAI_API_TOKEN", "cli-token")
    with anyio.fail_after(10):
        async with await Store.open(tmp_path / "batch.sqlite") as held:
            await held.init_batch(name="t", tag="zbatch:t", cap_buzz=10)
            code = await anyio.to_thread.run_sync(main, ["cancel", str(tmp_path)])
    assert code == 7  # BatchInUse: docs/reliability.md, "The local machine"
    assert "is in use by pid" in capsys.readouterr().err


def test_an_old_record_warns_once_naming_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zbatch retry` and `zbatch verify --repair` on a record made before migration 4: one
    warning line each, naming the defaults they use; a new `zbatch run` records settings."""
    monkeypatch.setenv("CIVITAI_API_TOKEN", "cli-token")
    manifest, out = write_manifest(tmp_path), tmp_path / "out"
    with running_server(EmulatorConfig(time_scale=0)) as url:
        assert main(["run", str(manifest), "--api-url", url, "--quiet"]) == 0
        raw = sqlite3.connect(out / "batch.sqlite")
        raw.executescript(
            "DROP TABLE run_settings; ALTER TABLE batch DROP COLUMN manifest_cap_buzz;"
            " ALTER TABLE batch DROP COLUMN revision; ALTER TABLE cells DROP COLUMN revision;"
            " ALTER TABLE cells DROP COLUMN standing; DROP TABLE workers;"
            " PRAGMA user_version = 3;"  # 8 undone too: 7 rebuilds attempts without its columns
        )  # as migration 3 left it (5 is undone too, so that both run again)
        raw.close()
        capsys.readouterr()
        defaults = "captions none, 8 in flight, 2 submissions/s, 4 downloads, 1 attempt per cell"
        for argv in (["retry", str(out), "--quiet"], ["verify", str(out), "--repair"]):
            assert main([*argv, "--api-url", url]) == 0
            err = capsys.readouterr().err
            assert err.count("run_settings_not_recorded") == 1, err
            assert defaults in err
        assert main(["run", str(manifest), "--api-url", url, "--quiet"]) == 0
        capsys.readouterr()
        assert main(["retry", str(out), "--quiet", "--api-url", url]) == 0
        assert "run_settings_not_recorded" not in capsys.readouterr().err


async def test_retry_by_state_leaves_replaced_cells_alone(store: Store) -> None:
    """Issue 15: a failed cell that `run --replace` left out of the manifest is not paid for
    again by `zbatch retry`'s states; named with --cell, it is retried."""
    with anyio.fail_after(10):
        await finish(store, 0, AttemptState.FAILED)
        await finish(store, 1, AttemptState.FAILED)
        await store.plan_rows([cell(i) for i in (1, 2, 3)], max_attempts=1, leftover="replaced")
        plan = await store.retry_cells(states=("failed",))
        assert [c.cell_key for c in plan.chosen] == [cell(1).key]
        named = await store.retry_cells(states=(), cells=(cell(0).key,))
        assert [c.cell_key for c in named.chosen] == [cell(0).key]
