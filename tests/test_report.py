"""`zbatch report`: cells, images, failures, Buzz charged / refunded / cap, Buzz per usable
image, wall time and images per minute, as text and JSON, from a record read offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.cli._main import main
from runner.dataset._report import read_report, render_report, report_json
from runner.emulator import FaultProfile, FaultRule
from runner.identity import PlanRow
from runner.store._rows import AttemptState, ImageOutcome
from runner.store._store import Store
from tests.cells import planned_cell
from tests.test_dataset import run_small_batch


@pytest.fixture(autouse=True)
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main` would point structlog at a test's captured stderr, which is closed after it."""
    monkeypatch.setattr("runner.cli._main.configure_logging", lambda **_: None)


class Clock:
    """The store's clock, set by the test: every transition is stamped `now`."""

    def __init__(self) -> None:
        self.now = "2026-01-01T10:00:00.000+00:00"

    def __call__(self) -> str:
        return self.now


def cell(n: int) -> PlanRow:
    request = {"model": "turbo", "prompt": f"cell {n}", "width": 64, "height": 64, "quantity": 2}
    return planned_cell(f"{n:016x}", request, estimate_buzz=2)


async def recorded_batch(out: Path) -> None:
    """Four cells over ten minutes: two succeeded (one image lost), one failed and refunded,
    one never submitted."""
    clock = Clock()
    async with await Store.open(out / "batch.sqlite", now=clock) as store:
        await store.init_batch(name="interiors", tag="zbatch:interiors", cap_buzz=20)
        await store.plan_rows([cell(n) for n in range(4)], max_attempts=1)
        clock.now = "2026-01-01T10:01:00.000+00:00"
        for attempt_id in (1, 2, 3):
            assert await store.reserve(attempt_id, 2)
            await store.mark_running(attempt_id, f"wf-{attempt_id}", 2)
        both = [ImageOutcome(0, "b0", True), ImageOutcome(1, "b1", True)]
        await store.mark_finished(1, AttemptState.SUCCEEDED, charged_buzz=2, images=both)
        one = [ImageOutcome(0, "b2", True), ImageOutcome(1, None, False, "blocked: nsfw")]
        await store.mark_finished(2, AttemptState.SUCCEEDED, charged_buzz=2, images=one)
        reason = "the provider failed"
        await store.mark_finished(3, AttemptState.FAILED, charged_buzz=0, reason=reason)
        clock.now = "2026-01-01T10:10:00.000+00:00"
        for attempt_id, index in ((1, 0), (1, 1), (2, 0)):
            await store.mark_downloaded(
                attempt_id, index, path=f"images/x/{attempt_id}_{index}.jpg", sha256="0" * 64,
                size_bytes=10, width=64, height=64,
            )  # fmt: skip


async def test_report_text_holds_every_figure(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        await recorded_batch(tmp_path)
        report = await read_report(tmp_path)
    assert render_report(report) == "\n".join(
        [
            "interiors: 3 images from 4 cells for 4 Buzz",
            "",
            "cells     4: 1 planned, 2 succeeded, 1 failed",
            "images    3 downloaded, 0 pending, 1 lost",
            "buzz      4 charged after 2 refunded, cap 20 (20% used)",
            "          1.33 Buzz per usable image",
            "time      10m 00s wall, 0.3 images/min",
            "failures  1 failed (the provider failed)",
            "          1 image lost (blocked: nsfw)",
            "ended     0000000000000002  failed    cell 2",
        ]
    )


async def test_report_json_has_the_same_figures(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        await recorded_batch(tmp_path)
        doc = report_json(await read_report(tmp_path))
    assert doc["cells"] == {"total": 4, "by_state": {"planned": 1, "succeeded": 2, "failed": 1}}
    assert doc["images"] == {"pending": 0, "downloaded": 3, "lost": 1, "usable": 3}
    assert doc["buzz"] == {
        "charged": 4,
        "refunded": 2,
        "refunded_attempts": 1,
        "charged_before_refunds": 6,
        "reserved": 0,
        "cap": 20,
        "per_usable_image": 1.3333,
    }
    assert doc["time"] == {
        "first_event_at": "2026-01-01T10:00:00.000+00:00",
        "last_event_at": "2026-01-01T10:10:00.000+00:00",
        "wall_s": 600.0,
        "images_per_min": 0.3,
    }
    assert [f["kind"] for f in doc["failures"]] == ["failed", "image:lost"]
    assert doc["ended"] == {
        "total": 1,
        "cells": [
            {"cell": f"{2:016x}", "state": "failed", "reason": "the provider failed",
             "prompt": "cell 2"}
        ],
    }  # fmt: skip


async def test_report_of_a_batch_with_nothing_run_yet(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with await Store.open(tmp_path / "batch.sqlite") as store:
            await store.init_batch(name="fresh", tag="zbatch:fresh", cap_buzz=0)
        report = await read_report(tmp_path)
    text = render_report(report)
    assert text.splitlines()[0] == "fresh: 0 images from 0 cells for 0 Buzz"
    assert "per usable image" not in text
    assert "time" not in text
    assert report_json(report)["buzz"]["per_usable_image"] is None


async def test_refunds_match_the_emulators_ledger(tmp_path: Path) -> None:
    """Three failed steps are refunded by the service; the report counts the same Buzz."""
    with anyio.fail_after(60):
        faults = FaultProfile(step_fail=FaultRule(p=1.0, times=3))
        ledger: dict[str, Any] = {}
        m, outcome = await run_small_batch(tmp_path, faults=faults, ledger=ledger)
        report = await read_report(m.out)
    assert outcome.counts["failed"] == 3
    assert report.refunded_attempts == 3
    assert report.refunded_buzz == ledger["refunded_buzz"] == 3  # 1 Buzz per attempt
    assert report.budget.charged_buzz == ledger["net_buzz"]
    assert report.usable_images == 24
    assert report.cells == {"succeeded": 12}
    assert report.failures == []  # every cell's latest attempt succeeded: no failure stands
    assert report.images_per_min is not None
    assert report.images_per_min > 0


async def test_cli_report_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with anyio.fail_after(30):
        await recorded_batch(tmp_path)
    assert await anyio.to_thread.run_sync(main, ["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("interiors: 3 images from 4 cells for 4 Buzz\n")
    assert await anyio.to_thread.run_sync(main, ["report", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["buzz"]["refunded"] == 2


def test_cli_report_without_a_batch_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist or is not a folder" in capsys.readouterr().err
