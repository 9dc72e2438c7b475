"""The summary `zbatch run` and `zbatch retry` print on stdout once the run ends.

Counts, Buzz and what the run did, with where the images and the record are: no token, no
URL.
"""

from __future__ import annotations

from pathlib import Path

from runner.cli._progress import OPEN_STATES, _images, _states
from runner.disk import OutFolder
from runner.ops import RunOutcome
from runner.store import AttemptState


def render_summary(outcome: RunOutcome, *, out: Path | None = None) -> str:
    """The final human summary `zbatch run` prints to stdout.

    Cells and attempts by state, images, Buzz against the cap, what this run did, and with
    `out` where the images and the record are; when the cap stopped the run, how many cells
    were not submitted and what budget would finish them.
    """
    counts, b, stats, plan = outcome.counts, outcome.budget, outcome.stats, outcome.plan
    total = plan.added + plan.kept + plan.removed  # every cell the record holds
    succeeded = counts.get(AttemptState.SUCCEEDED.value, 0)
    open_cells = sum(counts.get(s.value, 0) for s in OPEN_STATES)
    ended = max(0, total - succeeded - open_cells)
    lines = [_headline(outcome, total, succeeded, open_cells)]
    lines.append(
        f"cells       {total}: {succeeded} succeeded · {ended} ended without success"
        f" · {open_cells} not finished"
    )
    lines.append("attempts    " + (_states(counts) or "none"))
    lines.append("images      " + _images(counts))
    lines.append(
        f"Buzz        {b.charged_buzz} charged of a {b.cap_buzz} cap"
        + (f" ({b.reserved_buzz} still reserved)" if b.reserved_buzz else "")
    )
    lines.append(
        f"this run    {stats.submitted} submitted · {stats.resubmitted} resubmitted after a stop"
        f" · {stats.retries} API retries"
    )
    if plan.added or plan.removed:
        lines.append(
            f"manifest    {plan.added} new cells · {plan.kept} already known"
            f" · {plan.removed} no longer in the manifest (their record is kept)"
        )
    if out is not None:
        lines.append(f"images in   {out / 'images'}")
        lines.append(f"record      {OutFolder(out).db}  (zbatch status {out})")
    if outcome.unsubmitted and stats.cap_reached:
        finish_buzz = b.committed_buzz + outcome.unsubmitted_buzz
        lines.append(
            f"cap         {outcome.unsubmitted} cells not submitted, about"
            f" {outcome.unsubmitted_buzz} Buzz: a cap of {finish_buzz} would finish them"
            f" (run again with --budget {finish_buzz}; retries may need more)"
        )
    elif outcome.unsubmitted and stats.stop_reason is not None:
        lines.append(
            f"left        {outcome.unsubmitted} cells not submitted: run again to continue"
        )
    return "\n".join(lines)


def _headline(outcome: RunOutcome, total: int, succeeded: int, open_cells: int) -> str:
    stats = outcome.stats
    if stats.cap_reached:
        return f"Stopped at the Buzz cap: {succeeded} of {total} cells succeeded."
    if stats.stop_reason is not None:
        return f"Stopped ({stats.stop_reason}): {succeeded} of {total} cells succeeded."
    if outcome.sampled is not None:
        return (
            f"Sample: {outcome.sampled} cells across every axis ran; {succeeded} of {total}"
            " cells succeeded so far. Run again without --sample for the rest."
        )
    if open_cells or outcome.counts.get("image:pending", 0):
        return f"Not finished: {open_cells} of {total} cells still open."
    did = stats.submitted or stats.resubmitted or stats.finished or stats.images_downloaded
    if not (did or outcome.plan.added):
        return f"Nothing to do: the batch was already finished ({succeeded} of {total} succeeded)."
    return f"Done: {succeeded} of {total} cells succeeded."
