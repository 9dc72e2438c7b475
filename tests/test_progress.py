"""The live display and the run summary: plain lines, the Live panel, rates, ETA, the cap."""

from __future__ import annotations

import functools
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from runner.api._client import Client
from runner.cli._progress import (
    InFlight,
    RateWindow,
    Sampler,
    Snapshot,
    render_line,
    render_panel,
    show_progress,
)
from runner.cli._summary import render_summary
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app
from runner.engine._engine import Engine, EngineConfig
from runner.errors import CapReached
from runner.identity import PlanRow
from runner.manifest._load import parse_manifest
from runner.ops._run import RunOverrides, run_batch
from runner.store._rows import Budget
from runner.store._store import Store
from tests.cells import turbo_cell
from tests.e2e.test_run import FAST, MANIFEST

SENTINEL_TOKEN = "sentinel-token-6f1c0d2e"


class Screen(io.StringIO):
    """A console's file that says when something was written (no polling, no sleeps)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = anyio.Event()

    def write(self, text: str) -> int:
        n = super().write(text)
        self.written.set()
        return n

    async def wait_written(self) -> None:
        await self.written.wait()
        self.written = anyio.Event()


def snapshot(**changes: object) -> Snapshot:
    base: dict[str, object] = {
        "elapsed_s": 185.0,
        "total_cells": 520,
        "counts": {"planned": 100, "submitting": 4, "running": 16, "succeeded": 398,
                   "failed": 3, "blocked": 2},
        "images": {"downloaded": 796, "pending": 3, "lost": 0},
        "budget": Budget(cap_buzz=1000, committed_buzz=430, charged_buzz=412, reserved_buzz=18),
        "submitted": 420,
        "retries": 5,
        "cap_reached": False,
        "stop_reason": None,
        "submit_per_s": 2.04,
        "cells_per_min": 30.0,
    }  # fmt: skip
    base.update(changes)
    return Snapshot(**base)  # type: ignore[arg-type]


# -- pure rendering ----------------------------------------------------------------------


def test_rate_window_measures_over_the_last_window_only() -> None:
    window = RateWindow(window_s=60)
    assert window.per_s() is None
    window.add(0, 0)
    assert window.per_s() is None
    window.add(30, 300)  # 10/s
    assert window.per_s() == 10
    window.add(90, 300)  # nothing for a minute: the first sample leaves the window
    window.add(120, 360)
    assert window.per_s() == pytest.approx(60 / 90)  # from t=30 (the window's edge) to 120


def test_plain_line_shows_cells_attempts_images_buzz_rates_and_eta() -> None:
    assert render_line(snapshot()) == (
        "[3m05s] cells 400/520 done"
        " · attempts planned 100, submitting 4, running 16, succeeded 398, failed 3, blocked 2"
        " · images 796 on disk, 3 pending, 0 lost"
        " · Buzz 412 charged + 18 reserved of 1000"
        " · 2.0 submits/s · 30.0 cells/min · ETA 4m00s · 5 retries"
    )


def test_plain_line_says_the_cap_stopped_submitting_and_counts_only_what_is_in_flight() -> None:
    line = render_line(snapshot(cap_reached=True))
    assert line.endswith("· ETA 40s · 5 retries · CAP REACHED: submitting stopped")


def test_plain_line_before_any_rate_is_known() -> None:
    line = render_line(snapshot(elapsed_s=0.2, submit_per_s=None, cells_per_min=None))
    assert line.startswith("[0s] cells 400/520 done")
    assert "· - submits/s · - cells/min · ETA - ·" in line


def test_plain_line_names_a_stop() -> None:
    line = render_line(snapshot(stop_reason="SIGINT: finishing in-flight work", elapsed_s=7300))
    assert line.startswith("[2h01m] ")
    assert line.endswith("· stopping: SIGINT: finishing in-flight work")


# -- the ETA (issue 15, item 9) ---------------------------------------------------------

TIMING_OUT = {"running": 2, "succeeded": 518}  # the last two workflows hang until timeout


def test_eta_of_the_last_workflows_counts_their_age_not_the_recent_rate() -> None:
    # 518 cells finished fast (600/min): the rate alone says the last two end in 0.2 s.
    fast = snapshot(counts=TIMING_OUT, cells_per_min=600.0)
    assert fast.eta_s == pytest.approx(0.2)
    # Seen in flight for 150 s and 120 s, expected to take 10 s: overdue, a quarter of the
    # oldest one's age is left, and it grows while they hang instead of staying at 0.
    hanging = snapshot(
        counts=TIMING_OUT,
        cells_per_min=600.0,
        in_flight=(InFlight(age_s=150, expected_s=10), InFlight(age_s=120, expected_s=10)),
    )
    assert hanging.eta_s == pytest.approx(37.5)
    later = snapshot(counts=TIMING_OUT, cells_per_min=600.0, in_flight=(InFlight(200, 10),))
    assert later.eta_s == pytest.approx(50)
    assert "ETA 50s" in render_line(later)


def test_eta_of_a_young_workflow_is_its_expected_runtime_minus_its_age() -> None:
    young = snapshot(counts={"running": 1}, cells_per_min=None, in_flight=(InFlight(4, 30),))
    assert young.eta_s == pytest.approx(26)
    assert InFlight(age_s=0, expected_s=30).left_s == 30
    assert InFlight(age_s=30, expected_s=30).left_s == pytest.approx(7.5)  # never 0


def test_eta_with_cells_still_planned_takes_the_longer_of_rate_and_ages() -> None:
    # 120 open cells at 30 a minute: 4 minutes, longer than any workflow in flight.
    snap = snapshot(in_flight=(InFlight(age_s=5, expected_s=20),))
    assert snap.eta_s == pytest.approx(240)
    # No rate yet and cells still planned: unknown, whatever the ages say.
    assert snapshot(cells_per_min=None, in_flight=(InFlight(5, 20),)).eta_s is None


def test_no_eta_while_stopping_the_display_says_stopping() -> None:
    stopping = snapshot(stop_reason="SIGINT: finishing in-flight work")
    assert stopping.eta_s is None
    assert "· ETA stopping ·" in render_line(stopping)
    console = Console(width=80, force_terminal=True, color_system=None, record=True)
    console.print(render_panel(stopping, width=80))
    screen = console.export_text()
    assert re.search(r"│ ETA +stopping +│", screen), screen
    assert all(len(line) <= 80 for line in screen.splitlines())


@pytest.mark.parametrize("width", [80, 60, 40])
def test_the_panel_fits_the_terminal_and_keeps_its_eta_whole(width: int) -> None:
    big = snapshot(
        total_cells=50000,
        counts={"planned": 10000, "submitting": 40, "running": 160, "succeeded": 39800,
                "failed": 300, "blocked": 200},
        images={"downloaded": 79600, "pending": 300, "lost": 0},
        budget=Budget(cap_buzz=1000000, committed_buzz=430000, charged_buzz=412000,
                      reserved_buzz=18000),
        service="service unreachable since 02:13, retrying",
    )  # fmt: skip
    console = Console(width=width, force_terminal=True, color_system=None, record=True)
    console.print(render_panel(big, width=width))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) == width
    assert any(re.fullmatch(r"│ ETA +5h40m +│", line) for line in lines), lines
    assert any("39800/50000 done" in line for line in lines)  # the numbers stay whole


# -- show_progress on an engine ------------------------------------------------------------


def cell(n: int) -> PlanRow:
    return turbo_cell(n, estimate_buzz=3)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    store = await Store.open(tmp_path / "batch.sqlite")
    await store.init_batch(name="t", tag="zbatch:t", cap_buzz=10)
    await store.plan_rows([cell(i) for i in range(4)], max_attempts=1)
    app = make_app(EmulatorConfig(time_scale=0))
    async with Client(base_url="http://emulator", token="t", transport=EmulatorTransport(app)) as c:
        try:
            yield Engine(store, c, EngineConfig(tag="zbatch:t", out_dir=tmp_path))
        finally:
            await store.close()


async def test_plain_progress_prints_a_line_then_waits_until_cancelled(engine: Engine) -> None:
    with anyio.fail_after(10):
        screen = Screen()
        console = Console(file=screen, force_terminal=False, width=300)
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(show_progress, engine, 4, console=console))
            await screen.wait_written()
            tg.cancel_scope.cancel()
        (line,) = screen.getvalue().splitlines()
        assert line.startswith("[0s] cells 0/4 done · attempts planned 4 · images 0 on disk")
        assert "Buzz 0 charged + 0 reserved of 10" in line


async def test_live_panel_on_a_terminal_ends_showing_the_final_state(engine: Engine) -> None:
    """Cancelled when the run ends, the panel redraws once more with what the run did."""
    with anyio.fail_after(10):
        screen = Screen()
        console = Console(file=screen, force_terminal=True, width=120)
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(show_progress, engine, total_cells=4, console=console))
            await screen.wait_written()
            (first, *_) = await engine.store.next_planned(1)
            assert await engine.store.reserve(first.id, 3)
            engine.stats.cap_reached = True
            tg.cancel_scope.cancel()
        text = screen.getvalue()
        assert "0 charged + 0 reserved of 10" in text  # the first frame
        final = text[text.rindex("zbatch run") :]
        assert "0 charged + 3 reserved of 10" in final
        assert "reached: nothing more is submitted" in final


async def test_progress_and_summary_of_a_real_run_show_no_token(tmp_path: Path) -> None:
    """A run on the emulator with the display on: lines and summary, never the token."""
    with anyio.fail_after(30):
        path = tmp_path / "m.yaml"
        path.write_text(MANIFEST.format(budget=5, seeds=2))
        m = parse_manifest(path.read_text(), path=path)
        screen = Screen()
        console = Console(file=screen, force_terminal=False, width=300)
        app = make_app(EmulatorConfig(time_scale=0))
        transport = EmulatorTransport(app)
        async with Client(
            base_url="http://emulator", token=SENTINEL_TOKEN, transport=transport
        ) as client:
            with pytest.raises(CapReached) as capped:
                await run_batch(
                    m,
                    client,
                    tuning=FAST,
                    overrides=RunOverrides(budget_buzz=5),
                    progress=functools.partial(show_progress, console=console),
                )
        result = capped.value.outcome
        summary = render_summary(result, out=m.out)
        assert screen.getvalue().startswith("[0s] cells 0/12 done")
        assert summary.splitlines()[0] == "Stopped at the Buzz cap: 5 of 12 cells succeeded."
        assert "7 cells not submitted, about 7 Buzz: a cap of 12 would finish them" in summary
        assert SENTINEL_TOKEN not in screen.getvalue() + summary


async def test_sampler_ages_the_workflows_in_flight_from_when_it_first_saw_them(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(anyio, "current_time", lambda: clock[0])
    sampler = Sampler(engine.store, 4, engine=engine)
    first, second = await engine.store.next_planned(2)
    for attempt in (first, second):
        assert await engine.store.reserve(attempt.id, 3)
    await engine.store.mark_running(first.id, "wf-1", 3)
    assert [w.age_s for w in (await sampler.snapshot()).in_flight] == [0.0, 0.0]
    clock[0] = 130.0
    await engine.store.release(second.id)  # no longer in flight: it leaves the list
    engine.stats.cap_reached = True  # nothing more is submitted: only the running one is left
    snap = await sampler.snapshot()
    assert [w.age_s for w in snap.in_flight] == [30.0]
    assert snap.eta_s is not None
    assert snap.eta_s >= snap.in_flight[0].left_s > 0  # an overdue workflow is never 0 s away
