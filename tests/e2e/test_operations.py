"""zbatch retry, cancel and verify end to end against the in-process emulator."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest
import structlog

from runner.api._client import Client
from runner.dataset import refresh_dataset
from runner.emulator import EmulatorConfig, FaultProfile, FaultRule, ManualClock, make_app
from runner.emulator.content import corrupt
from runner.emulator.ledger import account_id
from runner.engine._engine import Engine, EngineConfig
from runner.engine._pacing import Backoff
from runner.errors import CapReached
from runner.manifest._load import Manifest
from runner.ops import _retry as retry_module
from runner.ops._cancel import cancel_batch
from runner.ops._retry import RetrySettings, retry_batch
from runner.ops._run import RunOverrides, run_batch
from runner.ops._verify import verify_batch
from runner.store._migrations import SCHEMA_VERSION
from runner.store._store import Store
from tests.e2e.ops_harness import (
    FAST,
    TOKEN,
    cell_states,
    client_for,
    emulator_of,
    ids_by_external_id,
    images_on_disk_match,
    lose_an_image,
    manifest,
    rows,
    running,
    tick,
)

BACKOFF = Backoff(base_s=0.001, cap_s=0.01)


async def test_retry_gives_only_failed_cells_a_new_attempt(tmp_path: Path) -> None:
    """Failed cells get attempt 2; succeeded cells get no new workflow; all end succeeded."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2)  # 6 cells, one attempt each
        faults = FaultProfile(step_fail=FaultRule(p=1.0, times=2))
        app = make_app(EmulatorConfig(time_scale=0, faults=faults))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            before = cell_states(m)
            failed = {k for k, s in before.items() if s == "failed"}
            assert len(failed) == 2
            assert len(before) == 6
            seen = set(ids_by_external_id(app))
            outcome = await retry_batch(m.out, client, RetrySettings(), tuning=FAST)
        assert {(c.cell_key, c.attempt, c.was) for c in outcome.plan.chosen} == {
            (k, 2, "failed") for k in failed
        }
        new = set(ids_by_external_id(app)) - seen
        assert new == {f"zb-{k}-a2" for k in failed}  # nothing for the succeeded cells
        assert set(cell_states(m).values()) == {"succeeded"}
        assert images_on_disk_match(m) == 12


async def test_retry_leaves_cells_the_cap_stopped_and_blocked_cells_alone(tmp_path: Path) -> None:
    """Cap-stopped planned cells are not sent by a retry; blocked only when named."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2, budget=3)
        app = make_app(EmulatorConfig(time_scale=0, blocked_words=frozenset({"lighthouse"})))
        async with client_for(app) as client:
            with pytest.raises(CapReached) as capped:
                await run_batch(m, client, tuning=FAST)
            assert capped.value.outcome.stats.cap_reached
            blocked = [k for k, s in cell_states(m).items() if s == "blocked"]
            assert blocked
            count = emulator_of(app).state()["workflow_count"]
            nothing = await retry_batch(m.out, client, RetrySettings(), tuning=FAST)
            assert nothing.run is None
            assert nothing.plan.chosen == []
            named = await retry_batch(
                m.out,
                client,
                RetrySettings(cells=(blocked[0], "f" * 32), budget_buzz=10),
                tuning=FAST,
            )
        assert [(c.cell_key, c.was) for c in named.plan.chosen] == [(blocked[0], "blocked")]
        assert named.plan.skipped == {"f" * 32: "no such cell in this batch"}
        assert emulator_of(app).state()["workflow_count"] == count + 1  # the named cell only
        assert named.run is not None
        assert named.run.unsubmitted == 0
        assert rows(m, "SELECT COUNT(*) FROM attempts WHERE state = 'planned'")[0][0] > 0


async def test_retry_refuses_an_intact_cell_and_raises_the_cap(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            key = next(iter(cell_states(m)))
            out = await retry_batch(
                m.out, client, RetrySettings(cells=(key,), budget_buzz=5000), tuning=FAST
            )
        assert out.run is None
        assert "never retried" in out.plan.skipped[key]
        assert (
            rows(m, "SELECT cap_buzz FROM batch")[0][0] == 1000
        )  # nothing chosen, nothing changed


async def test_cancel_refunds_unstarted_workflows_and_stops_submitting(tmp_path: Path) -> None:
    """Workflows not yet processing are canceled and refunded; no run submits after it."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2, size="1024x1024", model="base")
        clock = ManualClock()  # stands still: every workflow stays unassigned
        app = make_app(EmulatorConfig(time_scale=1.0), clock=clock)
        emulator = emulator_of(app)
        async with client_for(app) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_batch, m, client)
                while running(m) < 6:
                    await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()  # the run is stopped with everything in flight
            charged = emulator.state()["buzz"]["net_buzz"]
            assert charged > 0
            async with await Store.open(m.out / "batch.sqlite") as store:
                report = await cancel_batch(store, client, "zbatch:ops", backoff=BACKOFF)
            assert (report.canceled, report.refunded_buzz, report.started) == (6, charged, [])
            assert emulator.state()["buzz"]["net_buzz"] == 0
            assert emulator.state()["statuses"] == {"canceled": 6}
            assert set(cell_states(m).values()) == {"canceled"}
            assert rows(m, "SELECT committed_buzz FROM batch")[0][0] == 0

            clock.advance(1000)
            again = await run_batch(m, client, tuning=FAST)
            assert again.canceled_at is not None
            assert again.stats.submitted == 0
            assert emulator.state()["workflow_count"] == 6

            async with anyio.create_task_group() as tg:
                tg.start_soon(tick, clock)
                resumed = await retry_batch(
                    m.out, client, RetrySettings(states=("canceled",)), runtime_scale=0.001,
                    tuning=FAST,
                )  # fmt: skip
                tg.cancel_scope.cancel()
        assert resumed.plan.canceled_lifted
        assert len(resumed.plan.chosen) == 6
        assert set(cell_states(m).values()) == {"succeeded"}
        assert images_on_disk_match(m) == 12


async def test_verify_finds_a_flipped_byte_and_a_deleted_file_and_repair_restores_them(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            found = rows(m, "SELECT path, sha256 FROM images ORDER BY path")
            flipped, deleted = m.out / found[0][0], m.out / found[1][0]
            data = bytearray(flipped.read_bytes())
            data[len(data) // 2] ^= 0x01
            flipped.write_bytes(bytes(data))
            deleted.unlink()

            report = await verify_batch(m.out)
            assert (report.checked, report.missing, report.corrupt) == (6, 1, 1)
            assert not report.intact
            assert {d.path for d in report.damage} == {found[0][0], found[1][0]}

            repaired = await verify_batch(m.out, client=client, backoff=BACKOFF)
            assert (repaired.repaired, repaired.lost) == (2, 0)
            assert repaired.intact
        for path, sha in found[:2]:
            assert hashlib.sha256((m.out / path).read_bytes()).hexdigest() == sha
        assert (await verify_batch(m.out)).intact
        events = rows(m, "SELECT COUNT(*) FROM events WHERE to_state = 'image:repaired'")
        assert events[0][0] == 2


async def test_repair_marks_lost_what_the_service_no_longer_has(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            path = lose_an_image(m, app)  # its file, and its workflow on the service
            report = await verify_batch(m.out, client=client, backoff=BACKOFF)
        assert (report.missing, report.repaired, report.lost) == (1, 0, 1)
        assert not report.intact
        assert rows(m, "SELECT state FROM images WHERE path = ?", path) == [("lost",)]


@pytest.mark.parametrize("state", ["lost"])
async def test_retry_remakes_a_cell_whose_image_was_lost(tmp_path: Path, state: str) -> None:
    """A lost image (the blob is gone) is remade by a new attempt of its cell only."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1)
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            key, path, workflow = rows(
                m,
                "SELECT a.cell_key, i.path, a.workflow_id FROM images i"
                " JOIN attempts a ON a.id = i.attempt_id ORDER BY i.path LIMIT 1",
            )[0]
            (m.out / path).unlink()
            emulator_of(app).delete(account_id(TOKEN), workflow)
            await verify_batch(m.out, client=client, backoff=BACKOFF)
            seen = set(ids_by_external_id(app))
            out = await retry_batch(m.out, client, RetrySettings(states=(state,)), tuning=FAST)
        assert [(c.cell_key, c.attempt, c.was) for c in out.plan.chosen] == [(key, 2, "lost")]
        assert set(ids_by_external_id(app)) - seen == {f"zb-{key}-a2"}
        assert (await verify_batch(m.out)).intact
        assert (m.out / path).is_file()


async def test_cancel_leaves_processing_workflows_and_a_run_still_downloads_them(
    tmp_path: Path,
) -> None:
    """A workflow already processing is paid: cancel leaves it, the next run fetches it."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1, size="1024x1024", model="base")
        clock = ManualClock()
        app = make_app(EmulatorConfig(time_scale=1.0), clock=clock)
        emulator = emulator_of(app)
        async with client_for(app) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_batch, m, client)
                while running(m) < 3:
                    await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
            clock.advance(2.5)  # past every queue phase (at most 2 s), well before the end
            assert emulator.state()["statuses"] == {"processing": 3}
            async with await Store.open(m.out / "batch.sqlite") as store:
                report = await cancel_batch(store, client, "zbatch:ops", backoff=BACKOFF)
            assert (report.canceled, len(report.started)) == (0, 3)
            async with anyio.create_task_group() as tg:
                tg.start_soon(tick, clock)
                after = await run_batch(m, client, runtime_scale=0.001, tuning=FAST)
                tg.cancel_scope.cancel()
        assert after.canceled_at is not None
        assert after.stats.submitted == 0
        assert set(cell_states(m).values()) == {"succeeded"}
        assert images_on_disk_match(m) == 6
        assert emulator.state()["workflow_count"] == 3


# -- the batch's run settings (issue 13, item 4) -----------------------------------------

BATCH_LIMITS = "{in_flight: 3, submit_per_s: 500, downloads: 2}"  # none is an engine default


def spy_engine_configs(monkeypatch: pytest.MonkeyPatch) -> list[EngineConfig]:
    """Every EngineConfig `zbatch retry` builds its engine with."""
    configs: list[EngineConfig] = []

    class Spy(Engine):
        def __init__(self, store: Store, client: Client, config: EngineConfig) -> None:
            configs.append(config)
            super().__init__(store, client, config)

    monkeypatch.setattr(retry_module, "Engine", Spy)
    return configs


async def failed_captioned_batch(tmp_path: Path) -> Manifest:
    """A `captions: txt` batch of 6 cells, 2 of which failed under a fault profile."""
    profile = tmp_path / "two-fail.yaml"
    profile.write_text("step_fail: {p: 1, times: 2}\n")
    m = manifest(tmp_path, seeds=2, captions="txt", limits=BATCH_LIMITS)  # 1 attempt a cell
    app = make_app(EmulatorConfig.from_flags(time_scale=0, faults_path=profile))
    async with client_for(app) as client:
        await run_batch(m, client, tuning=FAST)
    assert sorted(cell_states(m).values()).count("failed") == 2
    return m


def captions_of(m: Manifest) -> dict[str, str | None]:
    """Each downloaded image's caption text (None: no `.txt` beside it)."""
    found = {}
    for (path,) in rows(m, "SELECT path FROM images WHERE state = 'downloaded'"):
        txt = (m.out / path).with_suffix(".txt")
        found[path] = txt.read_text() if txt.is_file() else None
    return found


async def test_retry_writes_captions_and_runs_at_the_batch_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `captions: txt` batch whose cells failed, retried against a healthy emulator: every
    image (the retried ones too) has its `.txt`, and the engine ran at the batch's limits."""
    with anyio.fail_after(30):
        m = await failed_captioned_batch(tmp_path)
        assert rows(m, "SELECT captions, in_flight, submit_per_s, downloads FROM run_settings")[
            0
        ] == ("txt", 3, 500.0, 2)
        configs = spy_engine_configs(monkeypatch)
        async with client_for(make_app(EmulatorConfig(time_scale=0))) as client:
            outcome = await retry_batch(m.out, client, RetrySettings(), tuning=FAST)
    assert len(outcome.plan.chosen) == 2
    assert set(cell_states(m).values()) == {"succeeded"}
    captions = captions_of(m)
    assert len(captions) == 12
    assert None not in captions.values(), "a retried image has no .txt caption"
    prompts = {"a fox in the snow", "a red lighthouse", "a bowl of ramen"}
    assert set(captions.values()) == prompts
    (config,) = configs
    assert (config.in_flight, config.submit_per_s, config.downloads) == (3, 500.0, 2)


async def test_retry_flags_override_the_batch_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with anyio.fail_after(30):
        m = await failed_captioned_batch(tmp_path)
        configs = spy_engine_configs(monkeypatch)
        override = RetrySettings(in_flight=5, downloads=1, captions="none", attempts=2)
        async with client_for(make_app(EmulatorConfig(time_scale=0))) as client:
            outcome = await retry_batch(m.out, client, override, tuning=FAST)
    assert [c.attempt for c in outcome.plan.chosen] == [2, 2]
    max_attempts = rows(m, "SELECT DISTINCT max_attempts FROM cells WHERE max_attempts > 1")
    assert max_attempts == [(3,)]  # 1 + --attempts 2, not 1 + the batch's 1
    (config,) = configs
    assert (config.in_flight, config.submit_per_s, config.downloads) == (5, 500.0, 1)
    missing = [path for path, text in captions_of(m).items() if text is None]
    assert len(missing) == 4  # --captions none: the 2 retried cells x 2 images have none


async def test_an_old_record_retries_as_before_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record made before migration 4 has no run settings: the retry runs with today's
    defaults (no captions, the engine's pace, one attempt) and one warning names them."""
    with anyio.fail_after(30):
        m = await failed_captioned_batch(tmp_path)
        make_schema_3(m.out / "batch.sqlite")
        configs = spy_engine_configs(monkeypatch)
        async with client_for(make_app(EmulatorConfig(time_scale=0))) as client:
            with structlog.testing.capture_logs() as logs:
                await retry_batch(m.out, client, RetrySettings(), tuning=FAST)
    warnings = [e for e in logs if e["event"] == "run_settings_not_recorded"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["uses"] == (
        "captions none, 8 in flight, 2 submissions/s, 4 downloads, 1 attempt per cell"
    )
    assert rows(m, "PRAGMA user_version") == [(SCHEMA_VERSION,)]  # migrated
    (config,) = configs
    assert (config.in_flight, config.submit_per_s, config.downloads) == (8, 2.0, 4)
    assert sum(text is None for text in captions_of(m).values()) == 4  # 2 cells x 2 images


async def test_verify_repair_writes_the_dataset_with_the_batch_captions(tmp_path: Path) -> None:
    """A deleted image and its caption come back with --repair; metadata.jsonl lists it."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=1, captions="txt")
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            (path,) = rows(m, "SELECT path FROM images ORDER BY path LIMIT 1")[0]
            (m.out / path).unlink()
            (m.out / path).with_suffix(".txt").unlink()
            metadata = m.out / "metadata.jsonl"
            metadata.write_text(metadata.read_text().split("\n", 1)[1])  # as a refresh leaves it
            report = await verify_batch(m.out, client=client, backoff=BACKOFF)
        assert report.repaired == 1
    assert captions_of(m)[path] is not None
    assert path in metadata.read_text()


def make_schema_3(db: Path) -> None:
    """Turn `db` into the record a zbatch of schema 3 made: no run settings kept."""
    con = sqlite3.connect(db)
    try:
        con.executescript(
            "DROP TABLE run_settings; ALTER TABLE batch DROP COLUMN manifest_cap_buzz;"
            " ALTER TABLE batch DROP COLUMN revision; ALTER TABLE cells DROP COLUMN revision;"
            " ALTER TABLE cells DROP COLUMN standing; DROP TABLE workers;"
            " PRAGMA user_version = 3;"
        )  # migrations 5 and 8 are undone too, so that 4 to 8 all run again (7 rebuilds
        # attempts without 8's columns)
    finally:
        con.close()


async def test_a_corrupt_jpeg_blob_is_fetched_again_then_lost_with_its_reason(
    tmp_path: Path,
) -> None:
    """Issue 15, item 4: the emulator's corrupt blob (Pillow decodes it, lower half shifted)
    never counts as downloaded: it is fetched again, then recorded lost with djpeg's reason."""
    with anyio.fail_after(60):
        m = manifest(tmp_path, seeds=1, size="512x512")
        faults = FaultProfile(blob_corrupt=FaultRule(p=1.0))
        app = make_app(EmulatorConfig(time_scale=0, faults=faults))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
        got = rows(m, "SELECT state, reason, path FROM images ORDER BY path")
        assert len(got) == 6
        lost = [reason for state, reason, _ in got if state == "lost"]
        assert lost
        assert all("Corrupt JPEG data" in reason for reason in lost)
        for state, _, path in got:  # what counts passes djpeg's strict decode
            if state == "downloaded":
                djpeg = ["djpeg", "-strict", "-outfile", "/dev/null", str(m.out / path)]
                assert (await anyio.run_process(djpeg, check=False)).returncode == 0


async def test_verify_calls_a_recorded_but_undecodable_jpeg_corrupt(tmp_path: Path) -> None:
    """An image recorded with the sha256 of damaged bytes (before the check was strict) is not
    intact: verify decodes it with the downloader's check."""
    with anyio.fail_after(60):
        m = manifest(tmp_path, seeds=1, size="512x512")
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
        path = rows(m, "SELECT path FROM images ORDER BY path LIMIT 1")[0][0]
        bad = corrupt((m.out / path).read_bytes())
        (m.out / path).write_bytes(bad)
        with closing(sqlite3.connect(m.out / "batch.sqlite")) as db, db:
            db.execute(
                "UPDATE images SET sha256 = ?, size_bytes = ? WHERE path = ?",
                (hashlib.sha256(bad).hexdigest(), len(bad), path),
            )
        report = await verify_batch(m.out)
        assert (report.checked, report.corrupt, report.missing) == (6, 1, 0)
        assert not report.intact
        assert [d.path for d in report.damage] == [path]
        assert "Corrupt JPEG data" in report.damage[0].detail


async def test_metadata_jsonl_is_written_as_soon_as_the_first_image_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: metadata.jsonl first appeared after ~30 s. With the periodic refresh pushed
    out of reach, the run still writes it mid-run, once its first image is on disk."""
    import runner.ops._run as run_module

    written: list[int] = []

    async def recording(store: Store, out: Path, *, captions: str, rebuild: bool = False) -> int:
        rows_now = await real(store, out, captions=captions, rebuild=rebuild)
        if not rebuild:
            written.append(rows_now)
        return rows_now

    real = refresh_dataset
    monkeypatch.setattr(run_module, "DATASET_EVERY_S", 1e9)
    monkeypatch.setattr(run_module, "refresh_dataset", recording)
    with anyio.fail_after(60):
        m = manifest(tmp_path, seeds=2)  # 6 cells, 12 images
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            overrides = RunOverrides(submit_per_s=4)  # the run outlasts its first image
            await run_batch(m, client, overrides=overrides, tuning=FAST)
    assert len(written) == 1
    assert 1 <= written[0] < 12, "written mid-run, with the images on disk then"
    assert len((m.out / "metadata.jsonl").read_text().splitlines()) == 12
