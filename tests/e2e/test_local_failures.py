"""The local machine fails during a run, against the in-process emulator; the next run (or
`zbatch verify --repair`) recovers without loss once the cause is fixed.

A real tmpfs where this machine lets us mount one, else the fault injected at the same
write boundary (tests/diskfull.py); docs/reliability.md, "The local machine", says which.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import pytest

from runner.dataset._metadata import METADATA_NAME, refresh_dataset
from runner.emulator import EmulatorConfig, ManualClock, make_app
from runner.errors import CapReached, DatabaseDamaged, DiskFull
from runner.manifest._load import Manifest, parse_manifest
from runner.ops._run import RunOverrides, run_batch
from runner.ops._verify import verify_batch
from runner.store._store import Store
from tests.diskfull import mount_permitted, small_disk
from tests.e2e.ops_harness import (
    FAST,
    assert_one_workflow_per_external_id,
    cell_states,
    client_for,
    emulator_of,
    ids_by_external_id,
    images_on_disk_match,
    rows,
)

MANIFEST = """
name: local
out: out
budget: 1000
seed_base: 5
captions: txt
defaults: {size: 64x64, quantity: 2, model: turbo}
grid:
  prompt: ["a fox in the snow", "a red lighthouse", "a bowl of ramen"]
  seed: {count: 6}
limits: {in_flight: 2, submit_per_s: 1000, downloads: 2}
"""
CELLS = 18


def manifest(tmp_path: Path) -> Manifest:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    return parse_manifest(path.read_text(), path=path)


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*.tmp") if p.name != ".filler"]


async def test_a_full_disk_stops_the_run_and_the_next_run_downloads_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """images/ on a full disk: the run stops taking new work with DiskFull naming the
    folder; images stay pending, no temp file is left, every intent on disk is the
    service's only workflow of its externalId. Space freed and the signed URLs expired,
    the next run downloads the rest without submitting anything twice."""
    m = manifest(tmp_path)
    clock = ManualClock()
    app = make_app(EmulatorConfig(time_scale=0, url_ttl_s=60), clock=clock)
    with small_disk(m.out / "images", 64 * 1024) as disk, anyio.fail_after(60):
        assert disk.real == mount_permitted()
        disk.inject(monkeypatch)
        disk.fill()
        async with client_for(app) as client:
            with pytest.raises(DiskFull) as caught:
                # slow submissions: the first refused image must stop the rest
                await run_batch(m, client, overrides=RunOverrides(submit_per_s=5), tuning=FAST)
            message = str(caught.value)
            assert f"the disk holding {m.out / 'images'}" in message, disk.kind
            assert " free of " in message
            sent = ids_by_external_id(app)
            states = cell_states(m)
            assert list(states.values()).count("planned") >= CELLS // 3, states  # it stopped
            past_planned = rows(m, "SELECT external_id FROM attempts WHERE state <> 'planned'")
            assert set(sent) <= {e for (e,) in past_planned}  # no request without its intent
            assert rows(m, "SELECT COUNT(*) FROM images WHERE state = 'downloaded'")[0][0] == 0
            assert rows(m, "SELECT COUNT(*) FROM images WHERE state = 'pending'")[0][0] > 0
            assert temp_files(m.out) == []

            disk.free()
            disk.grow(1024 * 1024)  # 36 images of at least a 4 KiB page each
            clock.advance(3600)  # every signed URL the first run saw has expired
            outcome = await run_batch(m, client, tuning=FAST)
        assert outcome.stats.submitted + outcome.stats.resubmitted == CELLS - len(sent)
        assert set(cell_states(m).values()) == {"succeeded"}
        assert images_on_disk_match(m) == CELLS * 2
        assert_one_workflow_per_external_id(app)
        assert emulator_of(app).state()["workflow_count"] == CELLS
        assert set(sent) <= set(ids_by_external_id(app))
        assert temp_files(m.out) == []
        lines = (m.out / METADATA_NAME).read_text().splitlines()
        assert len(lines) == CELLS * 2


async def test_a_full_disk_under_the_database_is_refused_before_any_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole out folder full: the resumed run's first commit fails (SQLITE_FULL or the
    WAL index cannot grow); nothing is submitted; freed, the run finishes the batch."""
    m = manifest(tmp_path)
    app = make_app(EmulatorConfig(time_scale=0))
    with small_disk(m.out, 8 * 1024 * 1024) as disk, anyio.fail_after(60):  # WAL: ~4 MiB
        assert disk.real == mount_permitted()
        disk.inject(monkeypatch)
        async with client_for(app) as client:
            with pytest.raises(CapReached) as capped:
                await run_batch(m, client, overrides=RunOverrides(budget_buzz=6), tuning=FAST)
            assert capped.value.outcome.stats.cap_reached
            count = emulator_of(app).state()["workflow_count"]
            before = rows(m, "SELECT id, state, reserved_buzz, charged_buzz FROM attempts")
            disk.fill()
            with pytest.raises(DiskFull, match="is full"):
                await run_batch(m, client, tuning=FAST)
            assert emulator_of(app).state()["workflow_count"] == count
            assert rows(m, "SELECT id, state, reserved_buzz, charged_buzz FROM attempts") == before
            disk.free()  # and the cap raised again: the last cap given (6) holds otherwise
            await run_batch(m, client, overrides=RunOverrides(budget_buzz=1000), tuning=FAST)
        assert set(cell_states(m).values()) == {"succeeded"}
        assert images_on_disk_match(m) == CELLS * 2
        assert_one_workflow_per_external_id(app)


async def test_sqlite_full_at_an_intent_sends_nothing_and_the_next_run_sends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INJECTED: SQLITE_FULL at the COMMIT of the intents holding the third. The run stops; the
    attempt stays planned and the service never saw its externalId; the next run sends it."""
    m = manifest(tmp_path)
    app = make_app(EmulatorConfig(time_scale=0))
    reserve_many, commit = Store.reserve_many, Store._commit
    calls = {"intents": 0}
    failing: set[int] = set()

    async def counting_reserve(self: Store, items: Sequence[tuple[int, int]]) -> list[int]:
        before = calls["intents"]
        calls["intents"] += len(items)
        if before < 3 <= calls["intents"]:  # the group holding the third intent
            failing.add(items[2 - before][0])
        return await reserve_many(self, items)

    def full_commit(self: Store, db: sqlite3.Connection) -> None:
        if failing:
            import sqlite3

            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorname = "SQLITE_FULL"
            failing.clear()
            raise exc
        commit(self, db)

    monkeypatch.setattr(Store, "reserve_many", counting_reserve)
    monkeypatch.setattr(Store, "_commit", full_commit)
    with anyio.fail_after(60):
        async with client_for(app) as client:
            with pytest.raises(DiskFull, match="SQLite: database or disk is full"):
                await run_batch(m, client, tuning=FAST)
            third = rows(m, "SELECT external_id, state FROM attempts ORDER BY id")[2]
            assert third[1] == "planned"
            assert third[0] not in ids_by_external_id(app)
            monkeypatch.setattr(Store, "_commit", commit)
            await run_batch(m, client, tuning=FAST)
        assert third[0] in ids_by_external_id(app)
        assert set(cell_states(m).values()) == {"succeeded"}
        assert_one_workflow_per_external_id(app)


@pytest.mark.parametrize("damage", ["truncated", "malformed"])
async def test_adopt_sets_a_damaged_database_aside_and_rebuilds_it(
    tmp_path: Path, damage: str
) -> None:
    """Refused without --adopt; with it the file is kept aside, byte for byte, and the
    record is rebuilt from the service: no workflow made twice, every image on disk."""
    m = manifest(tmp_path)
    app = make_app(EmulatorConfig(time_scale=0))
    with anyio.fail_after(60):
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            db = m.out / "batch.sqlite"
            data = db.read_bytes()
            damaged = (
                data[: len(data) // 2]
                if damage == "truncated"
                else data[:4096] + b"\xa5" * (len(data) - 4096)
            )
            db.write_bytes(damaged)
            count = emulator_of(app).state()["workflow_count"]
            with pytest.raises(DatabaseDamaged, match="--adopt"):
                await run_batch(m, client, tuning=FAST)
            outcome = await run_batch(m, client, overrides=RunOverrides(adopt=True), tuning=FAST)
        assert outcome.set_aside is not None
        assert outcome.set_aside.read_bytes() == damaged  # kept, not deleted
        assert outcome.adopted is not None
        assert outcome.adopted.adopted == CELLS
        assert emulator_of(app).state()["workflow_count"] == count
        assert_one_workflow_per_external_id(app)
        assert set(cell_states(m).values()) == {"succeeded"}
        assert images_on_disk_match(m) == CELLS * 2


async def test_an_image_deleted_or_changed_under_the_run_is_found_and_repaired(
    tmp_path: Path,
) -> None:
    """A file deleted (its whole folder) and one changed: the dataset refresh leaves the
    missing one out instead of crashing on its caption; verify finds both by sha256; repair,
    with every URL the run saw expired, fetches them again."""
    m = manifest(tmp_path)
    clock = ManualClock()
    app = make_app(EmulatorConfig(time_scale=0, url_ttl_s=60), clock=clock)
    with anyio.fail_after(60):
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            paths = [p for (p,) in rows(m, "SELECT path FROM images ORDER BY path")]
            gone = m.out / paths[0]
            shutil.rmtree(gone.parent)  # the image, its caption and its neighbours
            lost = len([p for p in paths if p.startswith(paths[0][:10])])
            changed = m.out / paths[-1]
            changed.write_bytes(changed.read_bytes()[:-7] + b"changed")
            async with await Store.open(m.out / "batch.sqlite") as store:
                rows_written = await refresh_dataset(store, m.out, captions="txt", rebuild=True)
            assert rows_written == CELLS * 2 - lost
            report = await verify_batch(m.out)
            assert (report.missing, report.corrupt) == (lost, 1)
            clock.advance(3600)
            repaired = await verify_batch(m.out, client=client)
            assert repaired.repaired == lost + 1
            assert repaired.intact
            async with await Store.open(m.out / "batch.sqlite") as store:
                rows_written = await refresh_dataset(store, m.out, captions="txt", rebuild=True)
        assert rows_written == CELLS * 2
        assert images_on_disk_match(m) == CELLS * 2
        assert gone.with_suffix(".txt").read_text() != ""


async def test_a_dataset_refresh_refused_mid_run_stops_the_run_and_the_next_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refuses metadata.jsonl while the run goes on (INJECTED: ENOSPC at the
    refresh, which runs at once here): the run stops with DiskFull naming the file, as a
    refused image would; the record stays whole, and the next run ends with the dataset
    listing every image, without a second workflow for any externalId."""
    import errno

    import runner.dataset._metadata
    import runner.ops._run

    m = manifest(tmp_path)
    app = make_app(EmulatorConfig(time_scale=0))
    real_refresh = runner.dataset._metadata._refresh

    async def refused(*args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner.ops._run, "DATASET_EVERY_S", 0)
    monkeypatch.setattr(runner.dataset._metadata, "_refresh", refused)
    with anyio.fail_after(60):
        async with client_for(app) as client:
            with pytest.raises(DiskFull, match=METADATA_NAME):
                await run_batch(m, client, overrides=RunOverrides(submit_per_s=5), tuning=FAST)
        assert not (m.out / METADATA_NAME).exists()
        states = list(cell_states(m).values())
        assert states.count("planned") > CELLS // 2, "it stopped mid-run, not at its end"
        monkeypatch.setattr(runner.dataset._metadata, "_refresh", real_refresh)
        async with client_for(app) as client:
            outcome = await run_batch(m, client, tuning=FAST)
    assert outcome.counts["succeeded"] == CELLS
    lines = (m.out / METADATA_NAME).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 * CELLS
    assert_one_workflow_per_external_id(app)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside `exc`, through nested exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def denied() -> OSError:
    """An OSError that looks like the disk's (EACCES) but comes from no write of the run."""
    import errno

    return PermissionError(errno.EACCES, "Permission denied", "/nonexistent/zbatch-bug")


@pytest.mark.parametrize(
    ("part", "error"),
    [
        ("poller", lambda: RuntimeError("bug")),
        ("downloader", lambda: RuntimeError("bug")),
        ("dataset refresh", lambda: RuntimeError("bug")),
        ("poller", denied),
    ],
)
async def test_a_bug_in_a_part_of_the_run_comes_out_as_itself(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    part: str,
    error: Callable[[], Exception],
) -> None:
    """An unexpected exception (a bug, not a refused write of the run) is neither turned
    into a disk or database error nor swallowed: the run raises it, alone in its exception
    group. A refused write is translated where it happens (`runner.disk`, the store); an
    EACCES from anywhere else is not taken for the disk's."""
    import runner.ops._run
    from runner.engine._downloader import Downloader
    from runner.engine._poller import Poller

    m = manifest(tmp_path)
    hit: list[str] = []

    async def bug(*args: object, **kwargs: object) -> None:
        hit.append(part)
        raise error()

    if part == "poller":
        monkeypatch.setattr(Poller, "_seen", bug)
    elif part == "downloader":
        monkeypatch.setattr(Downloader, "_download", bug)
    else:
        monkeypatch.setattr(runner.ops._run, "DATASET_EVERY_S", 0)
        monkeypatch.setattr(runner.ops._run, "refresh_dataset", bug)
    # time_scale > 0: workflows are still running when submitted, so the poller sees them
    app = make_app(EmulatorConfig(time_scale=0.01 if part == "poller" else 0))
    with anyio.fail_after(60):
        async with client_for(app) as client:
            with pytest.raises(BaseExceptionGroup) as caught:
                await run_batch(m, client, runtime_scale=0.01, tuning=FAST)
    assert hit, f"the {part} was never reached"
    found = leaves(caught.value)  # two download workers may both have hit it
    expected = error()
    assert {(type(e), str(e)) for e in found} == {(type(expected), str(expected))}, found
    assert_one_workflow_per_external_id(app)
