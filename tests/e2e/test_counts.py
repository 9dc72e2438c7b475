"""Counts by cell, end to end on the in-process emulator (issue 15, items 10 and 11): the run
summary, `zbatch status` and `zbatch report` agree after a repair and a retry, after a
canceled batch is retried, after image files are deleted, and with cells blocked by
moderation; the summary says why cells failed and what to do."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runner.cli._main import main
from runner.cli._summary import render_summary
from runner.dataset._report import read_report, render_report
from runner.dataset._status import read_status, render_status
from runner.emulator import EmulatorConfig, ManualClock, make_app
from runner.emulator.ledger import account_id
from runner.engine._pacing import Backoff
from runner.manifest._load import Manifest
from runner.ops._cancel import cancel_batch
from runner.ops._retry import RetrySettings, retry_batch
from runner.ops._run import RunOutcome, run_batch
from runner.ops._verify import verify_batch
from runner.store._store import Store
from tests.e2e.ops_harness import (
    FAST,
    TOKEN,
    cell_states,
    client_for,
    emulator_of,
    lose_an_image,
    manifest,
    rows,
    running,
    tick,
)

BACKOFF = Backoff(base_s=0.001, cap_s=0.01)


async def agree(m: Manifest, cells: dict[str, int], images: dict[str, int]) -> None:
    """Status and report count `cells` by state and `images` by state, as the summary did."""
    status = await read_status(m.out)
    report = await read_report(m.out)
    assert status.cells == report.cells == cells
    assert status.images == report.images == images
    assert status.files_on_disk == images["downloaded"]


def summary_lines(outcome: RunOutcome | None, m: Manifest) -> list[str]:
    assert outcome is not None
    return render_summary(outcome, out=m.out).splitlines()


async def test_repair_then_retry_counts_each_cell_once(tmp_path: Path) -> None:
    """`verify --repair` loses an image the service no longer has; `retry` remakes its cell.
    The cell has two succeeded attempts, and counts once: 6 of 6, not 7 of 6."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2)  # 6 cells, 2 images each
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            lose_an_image(m, app)  # its file, and its workflow on the service
            repaired = await verify_batch(m.out, client=client, backoff=BACKOFF)
            assert repaired.lost == 1
            retried = await retry_batch(m.out, client, RetrySettings(), tuning=FAST)
        lines = summary_lines(retried.run, m)
        assert lines[0] == "Done: 6 of 6 cells succeeded."
        assert lines[1] == "cells       6: 6 succeeded · 0 ended without success · 0 not finished"
        assert lines[2] == "attempts    succeeded 7"
        assert lines[3] == "images      12 on disk, 0 pending, 0 lost"
        assert not any(line.startswith("failures") for line in lines)
        await agree(m, {"succeeded": 6}, {"pending": 0, "downloaded": 12, "lost": 0})
        assert (await read_status(m.out)).failures == []


async def test_canceled_cells_that_a_retry_made_succeed_are_no_failures(tmp_path: Path) -> None:
    """After `cancel`, then `retry --state canceled`, every cell succeeded: no failure stands,
    in the summary, status or report."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2, size="1024x1024", model="base")
        clock = ManualClock()  # stands still: every workflow stays unassigned
        app = make_app(EmulatorConfig(time_scale=1.0), clock=clock)
        async with client_for(app) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_batch, m, client)
                while running(m) < 6:
                    await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
            async with await Store.open(m.out / "batch.sqlite") as store:
                await cancel_batch(store, client, "zbatch:ops", backoff=BACKOFF)
            before = await read_status(m.out)
            async with anyio.create_task_group() as tg:
                tg.start_soon(tick, clock)
                resumed = await retry_batch(
                    m.out, client, RetrySettings(states=("canceled",)), runtime_scale=0.001,
                    tuning=FAST,
                )  # fmt: skip
                tg.cancel_scope.cancel()
        assert [(f.kind, f.count) for f in before.failures] == [("canceled", 6)]
        assert set(cell_states(m).values()) == {"succeeded"}
        lines = summary_lines(resumed.run, m)
        assert lines[0] == "Done: 6 of 6 cells succeeded."
        assert not any(line.startswith("failures") for line in lines)
        status, report = await read_status(m.out), await read_report(m.out)
        assert status.failures == report.failures == []
        assert "failures    none" in render_status(status)
        assert "failures  none" in render_report(report)
        await agree(m, {"succeeded": 6}, {"pending": 0, "downloaded": 12, "lost": 0})


async def test_a_run_fetches_deleted_images_again_or_records_them_lost(tmp_path: Path) -> None:
    """Three image files deleted: the two whose workflow the service still has are fetched
    again by the next `run`; the one whose workflow is gone is recorded lost, with why."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2)  # 6 cells, 2 images each
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            found = rows(
                m,
                "SELECT i.path, a.workflow_id, i.idx FROM images i"
                " JOIN attempts a ON a.id = i.attempt_id ORDER BY a.id, i.idx",
            )
            kept = [found[0], found[1]]  # both images of the first cell: its workflow stays
            gone = found[2]  # the first image of the second cell: its workflow is deleted
            for path, _, _ in (*kept, gone):
                (m.out / path).unlink()
            emulator_of(app).delete(account_id(TOKEN), gone[1])
            before = await read_status(m.out)
            again = await run_batch(m, client, tuning=FAST)
        assert (before.images["downloaded"], before.files_on_disk) == (12, 9)
        assert again.refetched == 3
        for path, _, _ in kept:
            assert (m.out / path).is_file()
        assert not (m.out / gone[0]).exists()
        lines = summary_lines(again, m)
        assert lines[0] == "Done: 6 of 6 cells succeeded."
        assert lines[3] == "images      11 on disk, 0 pending, 1 lost"
        assert lines[6] == (
            "missing     3 images were missing from disk: fetched again"
            " (2 downloaded this run, 1 lost)"
        )
        (reason,) = rows(m, "SELECT reason FROM images WHERE state = 'lost'")[0]
        assert lines[-1] == (
            f"failures    1 image lost ({reason}) — `zbatch retry {m.out}` fetches them again"
        )
        await agree(m, {"succeeded": 6}, {"pending": 0, "downloaded": 11, "lost": 1})


async def test_blocked_cells_are_said_with_the_services_reason_and_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two of six cells blocked by moderation: a run that exits 0 says how many, the reason
    the service gave, that they are not retried and where they are listed; status says the
    same, and the report lists them."""
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2)  # "a red lighthouse" x 2 seeds is blocked
        app = make_app(EmulatorConfig(time_scale=0, blocked_words=frozenset({"lighthouse"})))
        async with client_for(app) as client:
            outcome = await run_batch(m, client, tuning=FAST)
        lines = summary_lines(outcome, m)
        assert lines[0] == "Done: 4 of 6 cells succeeded."
        assert lines[1] == "cells       6: 4 succeeded · 2 ended without success · 0 not finished"
        said = (
            "2 blocked by moderation (reason: blocked) — not retried;"
            f" `zbatch report {m.out}` lists them"
        )
        assert lines[-1] == "failures    " + said
        await agree(m, {"succeeded": 4, "blocked": 2}, {"pending": 0, "downloaded": 8, "lost": 0})
        assert await anyio.to_thread.run_sync(main, ["status", str(m.out)]) == 0
        status = capsys.readouterr().out.splitlines()
        assert "cells       6: succeeded 4 · blocked 2" in status
        assert "failures    " + said in status
        assert await anyio.to_thread.run_sync(main, ["report", str(m.out)]) == 0
        report = capsys.readouterr().out.splitlines()
        assert "failures  2 blocked by moderation (reason: blocked)" in report
        blocked = [
            key
            for (key,) in rows(m, "SELECT key FROM cells ORDER BY seq, replica, key")
            if cell_states(m)[key] == "blocked"
        ]
        first = report.index(f"ended     {blocked[0]}  blocked   a red lighthouse")
        assert report[first + 1] == f"          {blocked[1]}  blocked   a red lighthouse"
