"""`zbatch cancel`: stop a batch from submitting and cancel its workflows that have not started.

Holding the batch lock (no runner may be running), in this order, so a crash at any point
leaves a batch that submits nothing more:

1. `Store.cancel_batch`: the batch is flagged canceled and every planned attempt becomes
   `canceled` (it never reached the service; nothing was spent).
2. Intents (`submitting`) are looked up under the batch's tag: one the service has is
   recorded `running` and handled as below; one it does not have is withdrawn
   (`submitting -> canceled`, its reservation released).
3. Each running workflow is read: not started yet (`unassigned`, `preparing`, `scheduled`)
   -> `PUT {"status": "canceled"}`, read again and recorded with its outcome and the charge
   left after the refund; already ended -> recorded as the poller would; `processing` ->
   left running (it is paid and cannot be refunded): the next `zbatch run` downloads it.
4. `cancel_batch` again: a failure recorded in step 3 may have planned a retry.

`zbatch retry` lifts the cancel (docs/operations.md).
"""

from __future__ import annotations

import functools
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from runner.api import Client, WorkflowStatus
from runner.dataset import HERE, RecordAt, open_record
from runner.engine import Backoff, charge_of, retrying
from runner.errors import NotFoundError
from runner.ops._adopt import record_terminal, tagged_workflows
from runner.ops._run import Target
from runner.ops._token import has_token, no_token
from runner.store import Attempt, AttemptState, Store

log = structlog.get_logger(__name__)
REASON = "canceled by zbatch cancel"
NOT_STARTED = frozenset(
    {WorkflowStatus.UNASSIGNED, WorkflowStatus.PREPARING, WorkflowStatus.SCHEDULED}
)


@dataclass
class CancelReport:
    """What `cancel_batch` did."""

    unsubmitted: int = 0  # planned attempts canceled: never sent, nothing spent
    canceled: int = 0  # workflows canceled on the service before they started
    refunded_buzz: int = 0  # what those cancels gave back
    withdrawn: int = 0  # intents the service never received
    finished: int = 0  # workflows that had already ended: their outcome recorded
    vanished: int = 0  # workflows the service no longer knows: recorded canceled, as charged
    started: list[str] = field(default_factory=list)  # processing: left to finish (paid)
    offline: bool = False  # no token, and no workflow in flight: the service was not asked


async def cancel_batch(store: Store, client: Client, tag: str, *, backoff: Backoff) -> CancelReport:
    """Cancel the batch in `store` (the lock held); see the module docstring."""
    report = CancelReport(unsubmitted=await store.cancel_batch(REASON))
    await _resolve_intents(store, client, tag, backoff, report)
    for attempt in await store.active():
        await _cancel_running(store, client, attempt, backoff, report)
    report.unsubmitted += await store.cancel_batch(REASON)
    log.info(
        "batch_canceled",
        unsubmitted=report.unsubmitted,
        canceled=report.canceled,
        refunded_buzz=report.refunded_buzz,
        withdrawn=report.withdrawn,
        started=len(report.started),
    )
    return report


async def _resolve_intents(
    store: Store, client: Client, tag: str, backoff: Backoff, report: CancelReport
) -> None:
    intents = {a.external_id: a for a in await store.active() if a.state is AttemptState.SUBMITTING}
    if not intents:
        return
    async with aclosing(tagged_workflows(client, tag, backoff=backoff)) as workflows:
        async for wf in workflows:
            attempt = intents.pop(wf.external_id or "", None)
            if attempt is not None and wf.id is not None:
                charged = charge_of(wf, fallback_buzz=attempt.estimate_buzz)
                await store.mark_running(attempt.id, wf.id, charged)
            if not intents:
                break
    for attempt in intents.values():
        await store.withdraw(attempt.id, f"{REASON}: the service had no workflow for it")
        report.withdrawn += 1


async def _cancel_running(
    store: Store, client: Client, attempt: Attempt, backoff: Backoff, report: CancelReport
) -> None:
    assert attempt.workflow_id is not None  # running attempts have one
    get = functools.partial(client.get, attempt.workflow_id)
    try:
        wf = await retrying(get, backoff=backoff, what="cancel_read")
        if wf.status in NOT_STARTED:
            cancel = functools.partial(client.cancel, attempt.workflow_id)
            await retrying(cancel, backoff=backoff, what="cancel")
            wf = await retrying(get, backoff=backoff, what="cancel_read")
            if wf.is_terminal:
                outcome, charged = await record_terminal(store, attempt.id, wf)
                if outcome is AttemptState.CANCELED:
                    report.canceled += 1
                    report.refunded_buzz += max(0, attempt.charged_buzz - charged)
                else:
                    report.finished += 1
                log.info("workflow_canceled", cell=attempt.cell_key, workflow=wf.id)
                return
        elif wf.is_terminal:
            await record_terminal(store, attempt.id, wf)
            report.finished += 1
            return
    except NotFoundError:
        await store.mark_finished(
            attempt.id,
            AttemptState.CANCELED,
            charged_buzz=attempt.charged_buzz,
            reason="the workflow is gone from the service (deleted or past retention)",
        )
        report.vanished += 1
        return
    report.started.append(attempt.workflow_id)


def render_cancel(report: CancelReport, *, out: str) -> str:
    """What `zbatch cancel` prints."""
    lines = [
        f"Canceled: the batch submits nothing more ({report.unsubmitted} unsubmitted attempts"
        " canceled).",
        f"workflows   {report.canceled} canceled before they started,"
        f" {report.refunded_buzz} Buzz refunded · {report.finished} had already ended"
        f" · {report.vanished} gone from the service · {report.withdrawn} intents never received",
    ]
    if report.started:
        lines.append(
            f"running     {len(report.started)} already processing: paid, left to finish;"
            f" `zbatch run` downloads their images"
        )
    if report.offline:
        lines.append("service     not asked: no workflow was in flight (no token needed)")
    lines.append(f"resume      zbatch retry {out} --state canceled")
    return "\n".join(lines)


async def cancel_out(out: Path, *, target: Target = Target(), at: RecordAt = HERE) -> CancelReport:
    """`zbatch cancel OUT`: take the batch lock, then cancel through the API at `target`.

    A running `zbatch run` holds the lock: StoreError names it. The token is the target's or
    the environment's. Without one, a batch with no workflow in flight (no intent, nothing
    running) is canceled offline (`offline`); one with workflows in flight raises the
    missing token, having changed nothing. `at`: the batch's record in PostgreSQL (the
    runner's advisory lock taken, as the folder's lock is on SQLite), else OUT/batch.sqlite.
    """
    async with await open_record(out, at, read_only=False) as store:
        info = await store.batch_info()
        if not has_token(target):
            in_flight = len(await store.active())
            if in_flight:
                raise no_token("zbatch cancel", f"{in_flight} workflows in flight to cancel")
            report = CancelReport(unsubmitted=await store.cancel_batch(REASON), offline=True)
            log.info("batch_canceled", unsubmitted=report.unsubmitted, offline=True)
            return report
        async with Client(base_url=target.base_url, token=target.token) as client:
            return await cancel_batch(store, client, info.tag, backoff=Backoff())
