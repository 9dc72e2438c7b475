"""The summary `zbatch run` and `zbatch retry` print at the end: what happened, what to do."""

from __future__ import annotations

from pathlib import Path

from runner.cli._summary import render_summary
from runner.engine._engine import RunStats
from runner.ops._run import RunOutcome
from runner.store._rows import Budget, FailureReason, PlanResult
from runner.store._tally import Tally


def tally(cells: dict[str, int], images: dict[str, int], *failures: FailureReason) -> Tally:
    ended = ("failed", "expired", "canceled", "blocked", "rejected")
    return Tally(
        cells=cells,
        images={"pending": 0, "downloaded": 0, "lost": 0} | images,
        failures=list(failures),
        failed_cells=sum(n for s, n in cells.items() if s in ended),
        lost_images=sum(f.count for f in failures if f.kind == "image:lost"),
    )


def outcome(
    *,
    counts: dict[str, int],
    stats: RunStats,
    by_cell: Tally,
    unsubmitted: int = 0,
    unsubmitted_buzz: int = 0,
) -> RunOutcome:
    charged = 12
    return RunOutcome(
        plan=PlanResult(added=12, kept=0, removed=0),
        stats=stats,
        budget=Budget(cap_buzz=12, committed_buzz=charged, charged_buzz=charged, reserved_buzz=0),
        counts=counts,
        unsubmitted=unsubmitted,
        unsubmitted_buzz=unsubmitted_buzz,
        tally=by_cell,
    )


def test_summary_of_a_finished_run_says_where_everything_is(tmp_path: Path) -> None:
    done = outcome(
        counts={"succeeded": 11, "blocked": 1, "image:downloaded": 22},
        stats=RunStats(submitted=12, finished={"succeeded": 11, "blocked": 1}, retries=2),
        by_cell=tally(
            {"succeeded": 11, "blocked": 1},
            {"downloaded": 22},
            FailureReason("blocked", "blocked", 1),
        ),
    )
    assert render_summary(done, out=tmp_path) == "\n".join(
        [
            "Done: 11 of 12 cells succeeded.",
            "cells       12: 11 succeeded · 1 ended without success · 0 not finished",
            "attempts    succeeded 11, blocked 1",
            "images      22 on disk, 0 pending, 0 lost",
            "Buzz        12 charged of a 12 cap",
            "this run    12 submitted · 0 resubmitted after a stop · 2 API retries",
            "manifest    12 new cells · 0 already known · 0 no longer in the manifest"
            " (their record is kept)",
            f"images in   {tmp_path / 'images'}",
            f"record      {tmp_path / 'batch.sqlite'}  (zbatch status {tmp_path})",
            "failures    1 blocked by moderation (reason: blocked) — not retried;"
            f" `zbatch report {tmp_path}` lists them",
        ]
    )


def test_summary_when_the_cap_stops_the_run_names_the_budget_that_finishes_it() -> None:
    capped = outcome(
        counts={"succeeded": 5, "planned": 7, "image:downloaded": 10},
        stats=RunStats(submitted=5, finished={"succeeded": 5}, cap_reached=True),
        by_cell=tally({"succeeded": 5, "planned": 7}, {"downloaded": 10}),
        unsubmitted=7,
        unsubmitted_buzz=9,
    )
    lines = render_summary(capped).splitlines()
    assert lines[0] == "Stopped at the Buzz cap: 5 of 12 cells succeeded."
    assert lines[1] == "cells       12: 5 succeeded · 0 ended without success · 7 not finished"
    assert lines[-1] == (
        "cap         7 cells not submitted, about 9 Buzz: a cap of 21 would finish them"
        " (run again with --budget 21; retries may need more)"
    )


def test_summary_of_a_rerun_of_a_finished_batch_says_nothing_to_do() -> None:
    again = RunOutcome(
        plan=PlanResult(added=0, kept=12, removed=0),
        stats=RunStats(),
        budget=Budget(cap_buzz=12, committed_buzz=12, charged_buzz=12, reserved_buzz=0),
        counts={"succeeded": 12, "image:downloaded": 24},
        unsubmitted=0,
        unsubmitted_buzz=0,
        tally=tally({"succeeded": 12}, {"downloaded": 24}),
    )
    summary = render_summary(again)
    assert summary.splitlines()[0] == (
        "Nothing to do: the batch was already finished (12 of 12 succeeded)."
    )
    assert "manifest" not in summary  # nothing added or removed: no manifest line


def test_summary_of_a_stopped_run_says_how_to_continue() -> None:
    stopped = outcome(
        counts={"succeeded": 4, "planned": 8},
        stats=RunStats(submitted=4, stop_reason="SIGTERM: finishing in-flight work"),
        by_cell=tally({"succeeded": 4, "planned": 8}, {}),
        unsubmitted=8,
        unsubmitted_buzz=8,
    )
    lines = render_summary(stopped).splitlines()
    assert lines[0] == "Stopped (SIGTERM: finishing in-flight work): 4 of 12 cells succeeded."
    assert lines[-1] == "left        8 cells not submitted: run again to continue"
