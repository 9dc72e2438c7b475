"""How attempts end: what a terminal workflow means for the record, and the recording of it.

The pure part (`outcome_of`, `image_outcomes`, `reason_of`, `charge_of`) is shared with
`zbatch cancel` and `run --adopt`. `Outcomes` records an attempt's end in the store, hands
the workflow's signed URLs to the downloaders, frees the attempt's slot and tells the
waiting tasks; the submitter and the poller call it, and nothing else ends an attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import anyio
import structlog

from runner.api import Workflow, WorkflowStatus
from runner.engine._shared import Changes, RunStats
from runner.store import Attempt, AttemptState, ImageOutcome, Store

log = structlog.get_logger(__name__)


class Ended(NamedTuple):
    """What `Outcomes.record` recorded: the outcome, the final charge, whether retried."""

    outcome: AttemptState
    charged_buzz: int
    retry: bool


class Outcomes:
    """Records terminal attempts; each one frees its slot and notifies `changes`."""

    def __init__(
        self,
        store: Store,
        *,
        slots: anyio.CapacityLimiter,
        stats: RunStats,
        changes: Changes,
        remember_urls: Callable[[int, Workflow], None],
    ) -> None:
        self.store = store
        self.slots = slots
        self.stats = stats
        self.changes = changes
        self.remember_urls = remember_urls

    async def finish(self, attempt: Attempt, wf: Workflow) -> None:
        """Record a terminal workflow; hand its images to the downloaders."""
        self.finished(attempt, wf, await self.record(attempt, wf))

    async def record(
        self, attempt: Attempt, wf: Workflow, *, running: tuple[str, int] | None = None
    ) -> Ended:
        """`finish`'s first half: the store's record of the end. With `running` (workflow
        id, charge) the attempt is still `submitting` in the record, its submit answered
        with the end already: both are recorded in one transition (`Store.mark_finished`)."""
        outcome = outcome_of(wf)
        charged = charge_of(wf, fallback_buzz=attempt.charged_buzz, final=True)
        retry = await self.store.mark_finished(
            attempt.id,
            outcome,
            charged_buzz=charged,
            images=image_outcomes(wf),
            reason=reason_of(wf, outcome),
            running=running,
        )
        return Ended(outcome, charged, retry is not None)

    def finished(self, attempt: Attempt, wf: Workflow, ended: Ended) -> None:
        """`finish`'s second half, once recorded: the images' URLs to the downloaders, the
        count, the log line, the slot freed."""
        self.remember_urls(attempt.id, wf)
        self.stats.count_finished(ended.outcome.value)
        log.info(
            "cell_finished",
            cell=attempt.cell_key,
            attempt=attempt.attempt,
            outcome=str(ended.outcome),
            charged_buzz=ended.charged_buzz,
            retry=ended.retry,
        )
        self.release(attempt.id)

    async def finish_vanished(self, attempt: Attempt) -> None:
        """The service no longer knows a running workflow: record it canceled, as charged."""
        await self.store.mark_finished(
            attempt.id,
            AttemptState.CANCELED,
            charged_buzz=attempt.charged_buzz,
            reason="the workflow is gone from the service (deleted or past retention)",
        )
        self.stats.count_finished(AttemptState.CANCELED.value)
        self.release(attempt.id)

    async def rejected(self, attempt: Attempt, reason: str) -> None:
        """The service refused the input (400): nothing was spent, the cell is not retried."""
        await self.store.mark_rejected(attempt.id, reason)
        self.stats.count_finished(AttemptState.REJECTED.value)
        self.release(attempt.id)

    def release(self, attempt_id: int) -> None:
        self.slots.release_on_behalf_of(attempt_id)
        self.changes.notify()


def outcome_of(wf: Workflow) -> AttemptState:
    """The attempt state a terminal workflow ends in; moderation makes it `blocked`."""
    blocked = any(i.blocked_reason for i in wf.images) or any("blocked" in e for e in wf.errors)
    if wf.status is WorkflowStatus.SUCCEEDED:
        return AttemptState.SUCCEEDED
    if blocked:
        return AttemptState.BLOCKED
    mapping: dict[WorkflowStatus, AttemptState] = {
        WorkflowStatus.FAILED: AttemptState.FAILED,
        WorkflowStatus.EXPIRED: AttemptState.EXPIRED,
        WorkflowStatus.CANCELED: AttemptState.CANCELED,
    }
    return mapping.get(wf.status, AttemptState.FAILED)


def image_outcomes(wf: Workflow) -> list[ImageOutcome]:
    """A terminal workflow's images as the store records them: deliverable or why not."""
    return [
        ImageOutcome(
            index=image.index,
            blob_id=image.blob_id,
            deliverable=image.deliverable,
            reason=image.blocked_reason or (None if image.available else "not available"),
        )
        for image in wf.images
    ]


def reason_of(wf: Workflow, outcome: AttemptState) -> str | None:
    if outcome is AttemptState.SUCCEEDED:
        return None
    texts = list(wf.errors) + [i.blocked_reason for i in wf.images if i.blocked_reason]
    return "; ".join(dict.fromkeys(texts)) or str(wf.status)


def charge_of(wf: Workflow, *, fallback_buzz: int, final: bool = False) -> int:
    """What the workflow cost: debits minus credits when it carries transactions.

    Without transactions a running workflow counts its price (or the reservation), so the
    ledger never under-counts while it is in flight.
    """
    if wf.debited_buzz or wf.credited_buzz:
        return max(0, wf.charged_buzz)
    if final and wf.status is not WorkflowStatus.SUCCEEDED:
        return fallback_buzz
    return wf.cost_total if wf.cost_total is not None else fallback_buzz
