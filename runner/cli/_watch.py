"""`zbatch status --watch`: follow a batch that a `zbatch run` in another terminal is running.

Reads OUT/batch.sqlite (or the PostgreSQL database of `--store`) read-only every
`--interval` seconds and shows the live panel of `zbatch run` (plain lines when stdout is not
a terminal), on stdout. Ends when the batch has
no open cell (planned, submitting, running) and no process holds the batch lock; Ctrl-C
ends it too, with exit 0. Knows only what the record says: not the run's retries, nor the
rates of submissions (the panel shows "-" for them). A batch in PostgreSQL is held by the
runner whose session holds its advisory lock, on any host (`PostgresStore.runner_pid`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from rich.console import Console

from runner.cli._help import rich_console
from runner.cli._progress import OPEN_STATES, Sampler, render_line, show_samples
from runner.disk import OutFolder
from runner.disk import lock_held as disk_lock_held
from runner.store import PostgresStore, Store

if TYPE_CHECKING:
    from runner.dataset import RecordAt


def lock_held(out: Path) -> bool:
    """Whether a process (a `zbatch run`, `retry`, `cancel`) holds the batch lock of `out`."""
    return disk_lock_held(OutFolder(out).db)


async def watch(
    out: Path,
    *,
    interval_s: float,
    console: Console | None = None,
    at: RecordAt | None = None,
) -> None:
    """Show the batch at `out` (its record at `at`: OUT/batch.sqlite by default) every
    `interval_s` until it has nothing open and no runner."""
    from runner.dataset import RecordAt, open_record

    store = await open_record(out, at or RecordAt())
    console = console or rich_console()
    async with store:
        sampler = Sampler(store, await store.cell_total())
        async with anyio.create_task_group() as tg:
            tg.start_soon(_until_finished, store, out, interval_s, tg.cancel_scope)
            await show_samples(
                sampler,
                console=console,
                interval_s=interval_s,
                plain_every_s=interval_s,
                title="zbatch status --watch",
            )
        if not console.is_terminal:  # the Live panel ends on its final frame; lines need one
            line = render_line(await sampler.snapshot(fresh=True))
            console.print(line, markup=False, highlight=False, soft_wrap=True)


async def _until_finished(
    store: Store, out: Path, interval_s: float, scope: anyio.CancelScope
) -> None:
    while True:
        await anyio.sleep(interval_s)
        counts = await store.counts()
        if any(counts.get(s.value, 0) for s in OPEN_STATES):
            continue
        if isinstance(store, PostgresStore):
            held = await store.runner_pid() is not None
        else:
            held = await anyio.to_thread.run_sync(lock_held, out)
        if not held:
            scope.cancel()
            return
