"""`zbatch report`: a batch's outcome in a few lines, for a commit message or a chat post.

Read offline from the record (read-only, safe during a run): cells by their latest attempt,
images, the top failure reasons, Buzz charged (net of refunds, as `zbatch status` counts it),
refunded and reserved against the cap, Buzz per usable (downloaded) image, the wall time
from the first recorded transition to the last, and images per minute over it. Refunds come
from the events table (`Store.activity`): a workflow that did not succeed is refunded its
price minus its final charge. The wall time spans every run of the batch, pauses between
resumed runs included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.dataset._failures import failure_line, shorten
from runner.dataset._metadata import HERE, RecordAt, read_batch
from runner.store import Budget, EndedCell, FailureReason, ImageState, ended_cells, tally

TOP_REASONS = 5
REASON_WIDTH = 72
ENDED_SHOWN = 20  # cells that ended without success, listed in text
ENDED_JSON = 1_000  # ... and in --json
PROMPT_WIDTH = 48


@dataclass(frozen=True)
class Report:
    """The figures of one batch, read at one instant."""

    name: str
    cells: dict[str, int]  # by the state of each cell's latest attempt
    images: dict[str, int]  # downloaded / pending / lost
    failures: list[FailureReason]
    budget: Budget
    refunded_buzz: int
    refunded_attempts: int
    first_event_at: str | None
    last_event_at: str | None
    ended: list[EndedCell] = dataclasses.field(default_factory=list)  # the first ENDED_JSON
    ended_total: int = 0  # cells whose latest attempt ended without success

    @property
    def usable_images(self) -> int:
        return self.images.get(ImageState.DOWNLOADED, 0)

    @property
    def wall_s(self) -> float | None:
        """Seconds from the first recorded transition to the last."""
        if self.first_event_at is None or self.last_event_at is None:
            return None
        first = datetime.fromisoformat(self.first_event_at)
        return (datetime.fromisoformat(self.last_event_at) - first).total_seconds()

    @property
    def images_per_min(self) -> float | None:
        wall = self.wall_s
        return 60 * self.usable_images / wall if wall else None

    @property
    def buzz_per_image(self) -> float | None:
        usable = self.usable_images
        return self.budget.charged_buzz / usable if usable else None


async def read_report(out: Path, *, at: RecordAt = HERE, top_reasons: int = TOP_REASONS) -> Report:
    """Read the batch's record (`at`: OUT/batch.sqlite by default) read-only; NotABatch when
    there is no batch."""
    async with read_batch(out, at) as (store, info):
        by_cell = await tally(store, top_reasons)
        budget = await store.budget()
        activity = await store.activity()
        ended = await ended_cells(store, ENDED_JSON)
    return Report(
        name=info.name,
        cells=by_cell.cells,
        images=by_cell.images,
        failures=by_cell.failures,
        ended=ended,
        ended_total=by_cell.failed_cells,
        budget=budget,
        refunded_buzz=activity.refunded_buzz,
        refunded_attempts=activity.refunded_attempts,
        first_event_at=activity.first_event_at,
        last_event_at=activity.last_event_at,
    )


def render_report(r: Report) -> str:
    """The report as a headline and a few short lines."""
    b, img = r.budget, r.images
    cells = sum(r.cells.values())
    lines = [
        f"{r.name}: {r.usable_images} images from {cells} cells for {b.charged_buzz} Buzz",
        "",
        f"cells     {_by_state(r.cells)}",
        f"images    {img['downloaded']} downloaded, {img['pending']} pending, {img['lost']} lost",
        f"buzz      {b.charged_buzz} charged after {r.refunded_buzz} refunded"
        + (f", {b.reserved_buzz} reserved" if b.reserved_buzz else "")
        + f", cap {b.cap_buzz}{_percent(b.committed_buzz, b.cap_buzz)}",
    ]
    if r.buzz_per_image is not None:
        lines.append(f"          {r.buzz_per_image:.2f} Buzz per usable image")
    if r.wall_s is not None:
        rate = f", {r.images_per_min:.1f} images/min" if r.images_per_min is not None else ""
        lines.append(f"time      {_duration(r.wall_s)} wall{rate}")
    if r.failures:
        for n, f in enumerate(r.failures):
            head = "failures  " if n == 0 else "          "
            lines.append(head + failure_line(f, width=REASON_WIDTH))
    else:
        lines.append("failures  none")
    lines.extend(_ended(r))
    return "\n".join(lines)


def _ended(r: Report) -> list[str]:
    """The cells that ended without success: key, state and prompt, the first ENDED_SHOWN."""
    lines = []
    for n, cell in enumerate(r.ended[:ENDED_SHOWN]):
        head = "ended     " if n == 0 else "          "
        prompt = shorten(cell.prompt, PROMPT_WIDTH)
        lines.append(f"{head}{cell.key}  {cell.state:<8}  {prompt}")
    more = r.ended_total - min(len(r.ended), ENDED_SHOWN)
    if more > 0:
        lines.append(f"          … {more} more (--json lists up to {ENDED_JSON})")
    return lines


def report_json(r: Report) -> dict[str, Any]:
    """The report as a JSON-ready document (`zbatch report OUT --json`)."""
    b = r.budget
    return {
        "batch": r.name,
        "cells": {"total": sum(r.cells.values()), "by_state": r.cells},
        "images": {**r.images, "usable": r.usable_images},
        "failures": [{"kind": f.kind, "reason": f.reason, "count": f.count} for f in r.failures],
        "ended": {
            "total": r.ended_total,
            "cells": [
                {"cell": c.key, "state": c.state, "reason": c.reason, "prompt": c.prompt}
                for c in r.ended
            ],
        },
        "buzz": {
            "charged": b.charged_buzz,
            "refunded": r.refunded_buzz,
            "refunded_attempts": r.refunded_attempts,
            "charged_before_refunds": b.charged_buzz + r.refunded_buzz,
            "reserved": b.reserved_buzz,
            "cap": b.cap_buzz,
            "per_usable_image": _round(r.buzz_per_image),
        },
        "time": {
            "first_event_at": r.first_event_at,
            "last_event_at": r.last_event_at,
            "wall_s": _round(r.wall_s),
            "images_per_min": _round(r.images_per_min),
        },
    }


def _by_state(by_state: dict[str, int]) -> str:
    total = sum(by_state.values())
    if not total:
        return "0"
    return f"{total}: " + ", ".join(f"{n} {state}" for state, n in by_state.items())


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{seconds:.1f}s"


def _percent(part: int, whole: int) -> str:
    return f" ({100 * part / whole:.0f}% used)" if whole > 0 else ""


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
