"""The live display of `zbatch run` on stderr (its final summary is `_summary.py`).

While the engine works, `show_progress` reads the store's counts and budget and the
engine's `RunStats`: on a terminal a rich `Live` panel refreshed twice a second, otherwise
one plain line every ~10 s so the log of an overnight run stays readable; it shows counts,
Buzz and rates only: no token, no URL. The summary printed at the end is `_summary.py`'s.

Rates come from a sliding window: submissions per second, and cells finished per minute
(cells whose last attempt is final, so a failed attempt that is retried does not count).
The ETA divides the cells still open by that rate; once the cap or a stop ends submitting,
only what is in flight remains.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runner.engine import Engine
from runner.store import AttemptState, Budget

WINDOW_S = 120.0  # rates are averaged over this much recent time
PLAIN_EVERY_S = 10.0  # one plain line this often when stderr is not a terminal
BAR_WIDTH = 24
FINAL_READ_S = 2.0  # how long the last frame may take once the run has ended
SLOW_READ_FACTOR = 10  # never spend more than 1/10 of the store's time on the display
OPEN_STATES = (AttemptState.PLANNED, AttemptState.SUBMITTING, AttemptState.RUNNING)
IN_FLIGHT_STATES = (AttemptState.SUBMITTING, AttemptState.RUNNING)


@dataclass(frozen=True)
class Snapshot:
    """What the display shows at one instant: the store's counts plus this run's stats."""

    elapsed_s: float
    total_cells: int
    counts: Mapping[str, int]  # attempts by state, images as `image:<state>` (Store.counts)
    budget: Budget
    submitted: int  # this run, resubmissions of a crash's intents included
    retries: int  # API calls retried this run
    cap_reached: bool
    stop_reason: str | None
    submit_per_s: float | None  # None until the window spans some time
    cells_per_min: float | None
    service: str | None = None  # "service unreachable since 02:13, retrying" in an outage

    @property
    def open_cells(self) -> int:
        """Cells with an attempt not yet final: a cell has at most one."""
        return sum(self.counts.get(s.value, 0) for s in OPEN_STATES)

    @property
    def done_cells(self) -> int:
        return max(0, self.total_cells - self.open_cells)

    @property
    def submitting_over(self) -> bool:
        return self.cap_reached or self.stop_reason is not None

    @property
    def eta_s(self) -> float | None:
        """Seconds until the open cells (only those in flight, once submitting is over) end."""
        states = IN_FLIGHT_STATES if self.submitting_over else OPEN_STATES
        remaining = sum(self.counts.get(s.value, 0) for s in states)
        if remaining == 0:
            return 0.0
        if not self.cells_per_min:
            return None
        return remaining / self.cells_per_min * 60


class RateWindow:
    """The rate of a growing total over the last `window_s` seconds of samples."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at_s: float, total: int) -> None:
        self._samples.append((at_s, total))
        # Keep one sample at or before the window's start, so the span covers the window.
        while len(self._samples) > 2 and self._samples[1][0] <= at_s - self.window_s:
            self._samples.popleft()

    def per_s(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


class Sampler:
    """Takes snapshots of a running engine, keeping the rate windows between them."""

    def __init__(self, engine: Engine, total_cells: int, *, window_s: float = WINDOW_S) -> None:
        self.engine = engine
        self.total_cells = total_cells
        self.started_s = anyio.current_time()
        self.submits = RateWindow(window_s)
        self.done = RateWindow(window_s)

    async def snapshot(self) -> Snapshot:
        counts = await self.engine.store.counts()
        budget = await self.engine.store.budget()
        stats = self.engine.stats
        now = anyio.current_time()
        done = max(0, self.total_cells - sum(counts.get(s.value, 0) for s in OPEN_STATES))
        self.submits.add(now, stats.submitted + stats.resubmitted)
        self.done.add(now, done)
        cells_per_s = self.done.per_s()
        return Snapshot(
            elapsed_s=now - self.started_s,
            total_cells=self.total_cells,
            counts=counts,
            budget=budget,
            submitted=stats.submitted + stats.resubmitted,
            retries=stats.retries,
            cap_reached=stats.cap_reached,
            stop_reason=stats.stop_reason,
            submit_per_s=self.submits.per_s(),
            cells_per_min=None if cells_per_s is None else cells_per_s * 60,
            service=self.engine.outage.describe(),
        )


async def show_progress(
    engine: Engine,
    total_cells: int,
    *,
    console: Console | None = None,
    interval_s: float = 0.5,
    plain_every_s: float = PLAIN_EVERY_S,
) -> None:
    """Show the run's progress on stderr until cancelled (`run_batch` cancels it at the end).

    A rich Live panel when the console is a terminal, else a plain line every
    `plain_every_s`. When reading the store gets slow (a huge batch), it reads less often.
    """
    console = console or Console(stderr=True)
    sampler = Sampler(engine, total_cells)
    if not console.is_terminal:
        while True:
            console.print(
                render_line(await sampler.snapshot()), markup=False, highlight=False, soft_wrap=True
            )
            await anyio.sleep(plain_every_s)
    with Live(
        render_panel(await sampler.snapshot()),
        console=console,
        auto_refresh=False,
        redirect_stdout=False,  # stdout is for results
        redirect_stderr=False,
    ) as live:
        try:
            while True:
                took_s = anyio.current_time()
                panel = render_panel(await sampler.snapshot())
                took_s = anyio.current_time() - took_s
                live.update(panel, refresh=True)
                await anyio.sleep(max(interval_s, SLOW_READ_FACTOR * took_s))
        finally:
            # Cancelled when the run ends: leave its final state on screen, not a stale frame.
            with anyio.move_on_after(FINAL_READ_S, shield=True):
                live.update(render_panel(await sampler.snapshot()), refresh=True)


# -- rendering (pure) -------------------------------------------------------------------


def render_line(snap: Snapshot) -> str:
    """One plain line for logs: cells, attempts by state, images, Buzz, rates, ETA."""
    b = snap.budget
    parts = [
        f"[{_duration(snap.elapsed_s)}] cells {snap.done_cells}/{snap.total_cells} done",
        "attempts " + (_states(snap.counts) or "none"),
        "images " + _images(snap.counts),
        f"Buzz {b.charged_buzz} charged + {b.reserved_buzz} reserved of {b.cap_buzz}",
        f"{_rate(snap.submit_per_s)} submits/s",
        f"{_rate(snap.cells_per_min)} cells/min",
        f"ETA {_eta(snap)}",
        f"{snap.retries} retries",
    ]
    if snap.service is not None:
        parts.append(snap.service)
    if snap.cap_reached:
        parts.append("CAP REACHED: submitting stopped")
    elif snap.stop_reason is not None:
        parts.append(f"stopping: {snap.stop_reason}")
    return " · ".join(parts)


def render_panel(snap: Snapshot) -> Panel:
    """The Live panel: the same facts as `render_line`, with bars for cells and Buzz."""
    b = snap.budget
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(width=BAR_WIDTH)
    grid.add_column(min_width=48)  # a steady width while the numbers grow
    grid.add_row(
        "cells",
        ProgressBar(total=max(snap.total_cells, 1), completed=snap.done_cells, width=BAR_WIDTH),
        f"{snap.done_cells}/{snap.total_cells} done",
    )
    grid.add_row("attempts", "", _states(snap.counts) or "none")
    grid.add_row("images", "", _images(snap.counts))
    grid.add_row(
        "Buzz",
        ProgressBar(
            total=max(b.cap_buzz, 1),
            completed=b.committed_buzz,
            width=BAR_WIDTH,
            complete_style="yellow",
        ),
        f"{b.charged_buzz} charged + {b.reserved_buzz} reserved of {b.cap_buzz}",
    )
    grid.add_row(
        "rate",
        "",
        f"{_rate(snap.submit_per_s)} submits/s · {_rate(snap.cells_per_min)} cells/min"
        f" · ETA {_eta(snap)}",
    )
    grid.add_row("retries", "", str(snap.retries))
    if snap.service is not None:
        grid.add_row("service", "", Text(snap.service, style="bold yellow"))
    if snap.cap_reached:
        grid.add_row("cap", "", Text("reached: nothing more is submitted", style="bold red"))
    elif snap.stop_reason is not None:
        grid.add_row("stopping", "", Text(snap.stop_reason, style="bold yellow"))
    return Panel(grid, title=f"zbatch run · {_duration(snap.elapsed_s)}", expand=False)


def _states(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{s.value} {counts[s.value]}" for s in AttemptState if counts.get(s.value))


def _images(counts: Mapping[str, int]) -> str:
    return (
        f"{counts.get('image:downloaded', 0)} on disk,"
        f" {counts.get('image:pending', 0)} pending, {counts.get('image:lost', 0)} lost"
    )


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _eta(snap: Snapshot) -> str:
    eta = snap.eta_s
    return "-" if eta is None else _duration(eta)


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
