"""Adoption: find a batch's workflows on the service by its tag and record them as attempts.

`zbatch run MANIFEST --adopt` calls `adopt_workflows` after planning, when `batch.sqlite` was
lost or another machine picks the batch up. Every workflow zbatch submits carries the tag
`zbatch:<batch name>`, the externalId `zb-<cell key>-a<attempt>` and the metadata
`{"zbatch": {"cell": <key>, "attempt": <n>}}` (docs/operations.md; `runner.identity` writes
and reads all three). Adoption pages through
the tag oldest first, so a cell's attempts come in the order they were made, matches each
workflow to its cell, and records it: paid, never resubmitted. A workflow that already ended
is recorded with its outcome at once (a failure plans the next attempt, which the next
workflow of the cell may then fill); one still running is followed by the engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import structlog

from runner.api import Client, Workflow, WorkflowPage
from runner.engine import Backoff, charge_of, image_outcomes, outcome_of, reason_of, retrying
from runner.identity import external_id, parse_external_id, parse_workflow_metadata
from runner.store import AttemptState, Store

log = structlog.get_logger(__name__)
PAGE_SIZE = 100
LISTED = 20  # unmatched / conflicting workflows named in a report; the rest are counted


@dataclass
class AdoptReport:
    """What adoption found under the batch's tag and what it recorded."""

    seen: int = 0  # workflows carrying the tag
    adopted: int = 0  # recorded now as attempts
    finished: int = 0  # of those, already ended: recorded with their outcome
    known: int = 0  # already in the record with the same workflow id
    charged_buzz: int = 0  # what the adopted workflows cost; it is in the ledger
    unmatched: int = 0  # no zbatch identity, or no such cell in this batch: left alone
    conflicts: int = 0  # the attempt is recorded with another workflow, or as never sent
    examples: list[str] = field(default_factory=list)  # the first unmatched and conflicts

    def note(self, what: str) -> None:
        if len(self.examples) < LISTED:
            self.examples.append(what)


def identity_of(wf: Workflow) -> tuple[str, int] | None:
    """The (cell key, attempt) a workflow was submitted for, or None if it is not ours.

    From the metadata `{"zbatch": {"cell", "attempt"}}`, else from the externalId; the two
    must agree when both are there.
    """
    found = parse_workflow_metadata(wf.raw.get("metadata"))
    if found is None and wf.external_id is not None:
        found = parse_external_id(wf.external_id)
    if found is None:
        return None
    if wf.external_id is not None and wf.external_id != external_id(*found):
        return None
    return found


def tagged_workflows(
    client: Client, tag: str, *, backoff: Backoff, page_size: int = PAGE_SIZE
) -> AsyncGenerator[Workflow, None]:
    """Every workflow carrying `tag`, oldest first; each page is retried on its own."""

    async def retried(call: Callable[[], Awaitable[WorkflowPage]]) -> WorkflowPage:
        return await retrying(call, backoff=backoff, what="query_tag")

    return client.iter_workflows(tags=[tag], take=page_size, ascending=True, retry=retried)


async def record_terminal(store: Store, attempt_id: int, wf: Workflow) -> tuple[AttemptState, int]:
    """Record a terminal workflow of a running attempt as the engine's poller would.

    Its outcome, final charge (a refund lowers it), reason and images; returns the outcome
    and the charge.
    """
    attempt = await store.attempt(attempt_id)
    outcome = outcome_of(wf)
    charged = charge_of(wf, fallback_buzz=attempt.charged_buzz, final=True)
    await store.mark_finished(
        attempt_id,
        outcome,
        charged_buzz=charged,
        images=image_outcomes(wf),
        reason=reason_of(wf, outcome),
    )
    return outcome, charged


async def adopt_workflows(
    store: Store, client: Client, tag: str, *, backoff: Backoff
) -> AdoptReport:
    """Record every workflow under `tag` that belongs to a cell of the batch; see above."""
    report = AdoptReport()
    async with aclosing(tagged_workflows(client, tag, backoff=backoff)) as workflows:
        async for wf in workflows:
            report.seen += 1
            await _adopt_one(store, wf, report)
    log.info(
        "workflows_adopted",
        seen=report.seen,
        adopted=report.adopted,
        finished=report.finished,
        known=report.known,
        unmatched=report.unmatched,
        conflicts=report.conflicts,
        charged_buzz=report.charged_buzz,
    )
    return report


async def _adopt_one(store: Store, wf: Workflow, report: AdoptReport) -> None:
    name = wf.external_id or wf.id or "a workflow without id"
    identity = identity_of(wf)
    estimate = None if identity is None else await store.cell_estimate(identity[0])
    if identity is None or estimate is None or wf.id is None:
        report.unmatched += 1
        report.note(f"{name}: matches no cell of this batch")
        log.warning("workflow_unmatched", workflow=wf.id, external_id=wf.external_id)
        return
    key, number = identity
    charged = charge_of(wf, fallback_buzz=estimate)
    adoption = await store.adopt_workflow(key, number, wf.id, charged)
    if adoption.status == "known":
        report.known += 1
        return
    if adoption.status != "adopted" or adoption.attempt_id is None:
        report.conflicts += 1
        report.note(f"{name}: {adoption.detail or adoption.status}; left alone")
        log.warning("workflow_conflict", workflow=wf.id, cell=key, detail=adoption.detail)
        return
    report.adopted += 1
    log.info("workflow_adopted", cell=key, attempt=number, workflow=wf.id, status=str(wf.status))
    if wf.is_terminal:
        _, charged = await record_terminal(store, adoption.attempt_id, wf)
        report.finished += 1
    report.charged_buzz += charged


def render_adoption(report: AdoptReport) -> str:
    """A few lines for `zbatch run --adopt`'s output."""
    lines = [
        f"adopted     {report.adopted} of {report.seen} workflows under the batch's tag"
        f" ({report.finished} already ended, {report.known} already recorded),"
        f" {report.charged_buzz} Buzz entered the ledger",
    ]
    if report.unmatched or report.conflicts:
        lines.append(
            f"left alone  {report.unmatched} matching no cell, {report.conflicts} conflicting"
            " with the record:"
        )
        lines += [f"            {example}" for example in report.examples]
    return "\n".join(lines)
