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
from dataclasses import dataclass, field

import anyio
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runner.cli._help import rich_console
from runner.cli._summary import images_text, states_text
from runner.contract import runtime_s
from runner.engine import Engine
from runner.log import console_sink
from runner.store import Attempt, AttemptState, Budget, Store, tally

WINDOW_S = 120.0  # rates are averaged over this much recent time
PLAIN_EVERY_S = 10.0  # one plain line this often when stderr is not a terminal
BAR_WIDTH = 24  # the widest a bar gets; narrower on a narrow terminal
MIN_BAR_WIDTH = 6
PANEL_WIDTH = 80  # the panel never gets wider (and is narrower on a narrower terminal)
LABEL_WIDTH = 8  # "attempts"
FINAL_READ_S = 2.0  # how long the last frame may take once the run has ended
SLOW_READ_FACTOR = 10  # never spend more than 1/10 of the store's time on the display
TALLY_EVERY_S = 2.0  # the by-cell image counts are re-read at most this often (see Sampler)
OVERDUE_FRACTION = 0.25  # a workflow past its expected runtime: this share of its age is left
OPEN_STATES = (AttemptState.PLANNED, AttemptState.SUBMITTING, AttemptState.RUNNING)
IN_FLIGHT_STATES = (AttemptState.SUBMITTING, AttemptState.RUNNING)


@dataclass(frozen=True)
class InFlight:
    """A workflow in flight: how long it has been seen in flight, and how long it should take."""

    age_s: float
    expected_s: float

    @property
    def left_s(self) -> float:
        """Its expected runtime minus its age; once overdue, a share of its age (never 0)."""
        return max(self.expected_s - self.age_s, OVERDUE_FRACTION * self.age_s)


@dataclass(frozen=True)
class Snapshot:
    """What the display shows at one instant: the store's counts plus this run's stats."""

    elapsed_s: float
    total_cells: int
    counts: Mapping[str, int]  # attempts by state (Store.counts; its `image:*` are not shown)
    budget: Budget
    submitted: int  # this run, resubmissions of a crash's intents included
    retries: int | None  # API calls retried this run (None: not known, `status --watch`)
    cap_reached: bool
    stop_reason: str | None
    submit_per_s: float | None  # None until the window spans some time
    cells_per_min: float | None
    service: str | None = None  # "service unreachable since 02:13, retrying" in an outage
    in_flight: tuple[InFlight, ...] = ()  # the workflows in flight, by age (when known)
    # Images by state, each (cell, index) once as the run summary counts them (`tally`).
    images: Mapping[str, int] = field(default_factory=dict)

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
        """Seconds until the open cells (only those in flight, once submitting is over) end.

        The longer of two estimates: what is left at the recent rate of finished cells, and
        the longest time left of a workflow in flight (`InFlight.left_s`), so a few slow
        workflows at the end are not shown as seconds away. None while no rate is known and
        no workflow in flight says more; None while stopping (the display says "stopping").
        """
        if self.stop_reason is not None:
            return None
        states = IN_FLIGHT_STATES if self.submitting_over else OPEN_STATES
        remaining = sum(self.counts.get(s.value, 0) for s in states)
        if remaining == 0:
            return 0.0
        by_age = max((w.left_s for w in self.in_flight), default=None)
        by_rate = remaining / self.cells_per_min * 60 if self.cells_per_min else None
        if by_rate is None:
            return by_age if by_age is not None and remaining <= len(self.in_flight) else None
        return by_rate if by_age is None else max(by_rate, by_age)


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
    """Takes snapshots of a batch's store (and of a running engine, when there is one),
    keeping the rate windows and the ages of the workflows in flight between them.

    `status --watch` samples a store another process writes: no engine, so no stats of the
    run (submitted, retries, the cap or a stop as the runner saw them).

    Cells and images are counted by cell, as the run summary counts them (docs/states.md):
    the done cells are those without an open attempt (a cell has at most one, and it is its
    latest), and the images come from the store's `tally`, each (cell, index) once, so after
    `verify --repair` and `retry` the panel shows what the summary will. The tally's queries
    cost more than `Store.counts` on a big batch, so they are re-read at most every
    TALLY_EVERY_S (longer when they are slow: SLOW_READ_FACTOR times what they took), not at
    every frame; `snapshot(fresh=True)` re-reads them (the final frame).
    """

    def __init__(
        self,
        store: Store,
        total_cells: int,
        *,
        engine: Engine | None = None,
        runtime_scale: float = 1.0,
        window_s: float = WINDOW_S,
    ) -> None:
        self.store = store
        self.engine = engine
        self.total_cells = total_cells
        self.runtime_scale = engine.config.runtime_scale if engine is not None else runtime_scale
        self.started_s = anyio.current_time()
        self.submits = RateWindow(window_s)
        self.done = RateWindow(window_s)
        self._seen: dict[int, tuple[float, float]] = {}  # attempt id: (first seen, expected s)
        self._images: dict[str, int] = {}
        self._images_at: float | None = None  # when the tally was last read
        self._images_every_s = TALLY_EVERY_S

    async def snapshot(self, *, fresh: bool = False) -> Snapshot:
        """The batch now; the by-cell image counts as of at most TALLY_EVERY_S ago, or now
        when `fresh`."""
        counts = await self.store.counts()
        images = await self._read_images(fresh)
        budget = await self.store.budget()
        in_flight = await self._in_flight()
        now = anyio.current_time()
        done = max(0, self.total_cells - sum(counts.get(s.value, 0) for s in OPEN_STATES))
        stats = self.engine.stats if self.engine is not None else None
        submitted = 0 if stats is None else stats.submitted + stats.resubmitted
        self.submits.add(now, submitted)
        self.done.add(now, done)
        cells_per_s = self.done.per_s()
        return Snapshot(
            elapsed_s=now - self.started_s,
            total_cells=self.total_cells,
            counts=counts,
            budget=budget,
            submitted=submitted,
            retries=None if stats is None else stats.retries,
            cap_reached=False if stats is None else stats.cap_reached,
            stop_reason=None if stats is None else stats.stop_reason,
            submit_per_s=None if stats is None else self.submits.per_s(),
            cells_per_min=None if cells_per_s is None else cells_per_s * 60,
            service=None if self.engine is None else self.engine.outage.describe(),
            in_flight=in_flight,
            images=images,
        )

    async def _read_images(self, fresh: bool) -> dict[str, int]:
        now = anyio.current_time()
        if fresh or self._images_at is None or now - self._images_at >= self._images_every_s:
            self._images = dict((await tally(self.store, top_reasons=0)).images)
            took_s = anyio.current_time() - now
            self._images_at = anyio.current_time()
            self._images_every_s = max(TALLY_EVERY_S, SLOW_READ_FACTOR * took_s)
        return self._images

    async def _in_flight(self) -> tuple[InFlight, ...]:
        """The workflows in flight, aged from when this display first saw them."""
        now = anyio.current_time()
        active = await self.store.active()
        seen: dict[int, tuple[float, float]] = {}
        for attempt in active:
            if attempt.id in self._seen:
                seen[attempt.id] = self._seen[attempt.id]
            else:
                seen[attempt.id] = (now, _expected_runtime_s(attempt) * self.runtime_scale)
        self._seen = seen
        return tuple(InFlight(age_s=now - first, expected_s=exp) for first, exp in seen.values())


def _expected_runtime_s(attempt: Attempt) -> float:
    """The seed table's high runtime for an attempt's request (0 when it names no size)."""
    r = attempt.request
    try:
        _, high = runtime_s(
            model=attempt.model,
            width=int(r["width"]),
            height=int(r["height"]),
            steps=int(r["steps"]),
            quantity=int(r["quantity"]),
        )
    except (KeyError, TypeError, ValueError):
        return 0.0
    return high


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
    sampler = Sampler(engine.store, total_cells, engine=engine)
    await show_samples(
        sampler,
        console=console or rich_console(stderr=True),
        interval_s=interval_s,
        plain_every_s=plain_every_s,
        title="zbatch run",
    )


async def show_samples(
    sampler: Sampler,
    *,
    console: Console,
    interval_s: float,
    plain_every_s: float,
    title: str,
) -> None:
    """Show `sampler`'s snapshots on `console` until cancelled: plain lines off a terminal,
    else a Live panel, with every log line printed above it (`runner.log.console_sink`)."""
    if not console.is_terminal:
        while True:
            console.print(
                render_line(await sampler.snapshot()), markup=False, highlight=False, soft_wrap=True
            )
            await anyio.sleep(plain_every_s)

    def panel(snap: Snapshot) -> Panel:
        return render_panel(snap, width=console.width, title=title)

    with (
        Live(
            panel(await sampler.snapshot()),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,  # stdout is for results
            redirect_stderr=False,
        ) as live,
        console_sink(lambda line: live.console.print(Text.from_ansi(line))),
    ):
        try:
            while True:
                took_s = anyio.current_time()
                frame = panel(await sampler.snapshot())
                took_s = anyio.current_time() - took_s
                live.update(frame, refresh=True)
                await anyio.sleep(max(interval_s, SLOW_READ_FACTOR * took_s))
        finally:
            # Cancelled when the run ends: leave its final state on screen, not a stale frame.
            with anyio.move_on_after(FINAL_READ_S, shield=True):
                live.update(panel(await sampler.snapshot(fresh=True)), refresh=True)


# -- rendering (pure) -------------------------------------------------------------------


def render_line(snap: Snapshot) -> str:
    """One plain line for logs: cells, attempts by state, images, Buzz, rates, ETA."""
    b = snap.budget
    parts = [
        f"[{_duration(snap.elapsed_s)}] cells {snap.done_cells}/{snap.total_cells} done",
        "attempts " + (states_text(snap.counts) or "none"),
        "images " + images_text(snap.images),
        f"Buzz {b.charged_buzz} charged + {b.reserved_buzz} reserved of {b.cap_buzz}",
        f"{_rate(snap.submit_per_s)} submits/s",
        f"{_rate(snap.cells_per_min)} cells/min",
        f"ETA {_eta(snap)}",
        f"{'-' if snap.retries is None else snap.retries} retries",
    ]
    if snap.service is not None:
        parts.append(snap.service)
    if snap.cap_reached:
        parts.append("CAP REACHED: submitting stopped")
    elif snap.stop_reason is not None:
        parts.append(f"stopping: {snap.stop_reason}")
    return " · ".join(parts)


def render_panel(snap: Snapshot, *, width: int = PANEL_WIDTH, title: str = "zbatch run") -> Panel:
    """The Live panel: the same facts as `render_line`, with bars for cells and Buzz.

    At most `width` (and PANEL_WIDTH) columns wide: one fact a row, the bars shrinking to
    leave their numbers whole, longer rows wrapping between words on a narrow terminal.
    """
    b = snap.budget
    width = max(20, min(width, PANEL_WIDTH))
    text_width = width - 4 - LABEL_WIDTH - 2  # borders and padding, the label, the gap
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True, width=LABEL_WIDTH)
    grid.add_column()
    done = f"{snap.done_cells}/{snap.total_cells} done"
    grid.add_row("cells", _bar(max(snap.total_cells, 1), snap.done_cells, done, text_width))
    grid.add_row("attempts", states_text(snap.counts) or "none")
    grid.add_row("images", images_text(snap.images))
    buzz = f"{b.charged_buzz} charged + {b.reserved_buzz} reserved of {b.cap_buzz}"
    grid.add_row("Buzz", _bar(max(b.cap_buzz, 1), b.committed_buzz, buzz, text_width, "yellow"))
    grid.add_row(
        "rate", f"{_rate(snap.submit_per_s)} submits/s · {_rate(snap.cells_per_min)} cells/min"
    )
    if snap.stop_reason is not None:
        grid.add_row("ETA", Text("stopping", style="bold yellow"))
    else:
        grid.add_row("ETA", _eta(snap))
    grid.add_row("retries", "-" if snap.retries is None else str(snap.retries))
    if snap.service is not None:
        grid.add_row("service", Text(snap.service, style="bold yellow"))
    if snap.cap_reached:
        grid.add_row("cap", Text("reached: nothing more is submitted", style="bold red"))
    elif snap.stop_reason is not None:
        grid.add_row("stopping", Text(snap.stop_reason, style="bold yellow"))
    return Panel(grid, title=f"{title} · {_duration(snap.elapsed_s)}", width=width)


def _bar(total: int, completed: int, text: str, room: int, style: str = "bar.complete") -> Table:
    """A bar and its numbers on one row: the bar takes what the numbers leave of `room`."""
    bar_width = max(MIN_BAR_WIDTH, min(BAR_WIDTH, room - len(text) - 1))
    row = Table.grid(padding=(0, 1))
    row.add_column(width=bar_width, no_wrap=True)
    row.add_column()
    row.add_row(
        ProgressBar(total=total, completed=completed, width=bar_width, complete_style=style), text
    )
    return row


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _eta(snap: Snapshot) -> str:
    if snap.stop_reason is not None:
        return "stopping"
    eta = snap.eta_s
    return "-" if eta is None else _duration(eta)


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
