"""The live display and the run summary: plain lines, the Live panel, rates, ETA, the cap."""

from __future__ import annotations

import functools
import io
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from runner.api._client import Client
from runner.cli._progress import RateWindow, Snapshot, render_line, show_progress
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
                   "failed": 3, "blocked": 2, "image:downloaded": 796, "image:pending": 3},
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
