"""The summary `zbatch run` and `zbatch retry` print on stdout once the run ends: what
happened, counted by cell as `zbatch status` and `zbatch report` count it, and what to do.

Cells by their latest attempt (a retried cell counts once), images once per cell and index,
Buzz against the cap, what this run did, where the images and the record are; then every
reason cells ended without success, with its count and the next command (`zbatch retry`,
or why not). No token, no URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from runner.dataset import failure_lines
from runner.disk import OutFolder
from runner.ops import RunOutcome
from runner.store import AttemptState, Tally

OPEN_STATES = (AttemptState.PLANNED, AttemptState.SUBMITTING, AttemptState.RUNNING)
LABEL = 12  # the width of the label column


def record_line(out: Path, store: str | None) -> str:
    """Where the record is, and the command that reads it (a URL without its password)."""
    if store is None:
        return f"record      {OutFolder(out).db}  (zbatch status {out})"
    from runner.store import redact

    shown = redact(store)
    return f"record      {shown}  (zbatch status {out} --store {shown})"


def render_summary(
    outcome: RunOutcome, *, out: Path | None = None, store: str | None = None
) -> str:
    """The final human summary `zbatch run` prints to stdout.

    Cells by state, attempts, images, Buzz against the cap, what this run did, and with
    `out` where the images and the record are (`store`: a PostgreSQL URL, shown redacted);
    the failures by reason with what to do; when the cap stopped the run, how many cells
    were not submitted and what budget would finish them.
    """
    t, b, stats, plan = _tally(outcome), outcome.budget, outcome.stats, outcome.plan
    total = t.total
    succeeded = t.count(AttemptState.SUCCEEDED)
    open_cells = sum(t.count(s) for s in OPEN_STATES)
    lines = [_headline(outcome, total, succeeded, open_cells)]
    lines.append(
        f"cells       {total}: {succeeded} succeeded · {t.failed_cells} ended without success"
        f" · {open_cells} not finished"
    )
    lines.append("attempts    " + (states_text(outcome.counts) or "none"))
    lines.append("images      " + images_text(t.images))
    lines.append(
        f"Buzz        {b.charged_buzz} charged of a {b.cap_buzz} cap"
        + (f" ({b.reserved_buzz} still reserved)" if b.reserved_buzz else "")
    )
    lines.append(
        f"this run    {stats.submitted} submitted · {stats.resubmitted} resubmitted after a stop"
        f" · {stats.retries} API retries"
    )
    if outcome.refetched:
        lines.append(
            f"missing     {outcome.refetched} images were missing from disk: fetched again"
            f" ({stats.images_downloaded} downloaded this run, {stats.images_lost} lost)"
        )
    if plan.added or plan.removed:
        lines.append(
            f"manifest    {plan.added} new cells · {plan.kept} already known"
            f" · {plan.removed} no longer in the manifest (their record is kept)"
        )
    if out is not None:
        lines.append(f"images in   {out / 'images'}")
        lines.append(record_line(out, store))
    lines.extend(_failures(t, out))
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


def _tally(outcome: RunOutcome) -> Tally:
    if outcome.tally is None:  # `read_outcome` always reads it
        raise ValueError("a run's outcome without its tally cannot be summarised")
    return outcome.tally


def _failures(t: Tally, out: Path | None) -> list[str]:
    """`failures    60 blocked by moderation (reason: ...) — not retried; ...`, a line each."""
    shown = sum(f.count for f in t.failures)
    more = t.failed_cells + t.lost_images - shown
    said = failure_lines(t.failures, out if out is not None else "OUT", more=more)
    return [("failures" if n == 0 else "").ljust(LABEL) + line for n, line in enumerate(said)]


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
    pending = _tally(outcome).images.get("pending", 0)
    if open_cells or pending:
        return f"Not finished: {open_cells} of {total} cells still open."
    did = stats.submitted or stats.resubmitted or stats.finished or stats.images_downloaded
    if not (did or outcome.plan.added or outcome.refetched):
        return f"Nothing to do: the batch was already finished ({succeeded} of {total} succeeded)."
    return f"Done: {succeeded} of {total} cells succeeded."


def states_text(counts: Mapping[str, int]) -> str:
    """Attempts by state, in the states' order (`running 2, succeeded 10`); the panel too."""
    return ", ".join(f"{s.value} {counts[s.value]}" for s in AttemptState if counts.get(s.value))


def images_text(images: Mapping[str, int]) -> str:
    """Images by state, counted by cell (`store.tally`); the panel says them the same way."""
    return (
        f"{images.get('downloaded', 0)} on disk,"
        f" {images.get('pending', 0)} pending, {images.get('lost', 0)} lost"
    )
