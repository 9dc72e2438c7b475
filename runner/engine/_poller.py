"""The poller: follows submitted workflows to a terminal status, in bulk where it pays.

Each running attempt has a due time: first near its model's expected finish (the seed's
runtime table), then backing off by half again up to `poll_max_s`. Once `bulk_poll_min`
workflows are watched, any due one makes the poller page through the batch's tag (newest
first, so it stops as soon as it has seen every due workflow), and the page also answers
for the watched workflows it lists that were not due yet: the finished ones are recorded,
the others are looked at again together. With fewer watched it GETs the due ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog

from runner.api._models import Workflow, WorkflowPage, WorkflowStatus
from runner.engine._pacing import retrying
from runner.errors import NotFoundError, ZbatchError
from runner.store._rows import Attempt

if TYPE_CHECKING:
    from runner.engine._engine import Engine


log = structlog.get_logger(__name__)
BULK_PAGE = 100
BACKOFF_FACTOR = 1.5
SETTLE_POLLS = 3


def refund_pending(wf: Workflow) -> bool:
    """A failed or expired workflow that shows its debit but no credit yet.

    The service refunds such workflows, and may post the credit a little after the status
    (the emulator did, in one race): the poller looks again a few times before recording
    the charge, so the ledger matches what the service really kept.
    """
    refunded_kinds = (WorkflowStatus.FAILED, WorkflowStatus.EXPIRED)
    return wf.status in refunded_kinds and wf.debited_buzz > 0 and wf.credited_buzz == 0


@dataclass
class Watch:
    """One running attempt: when to look next and how long to wait after that."""

    attempt: Attempt
    due_s: float
    interval_s: float
    settle_polls: int = 0  # looks taken at a terminal workflow whose refund is not posted yet


class Poller:
    """Polls the engine's running attempts until each one is terminal."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._watches: dict[str, Watch] = {}  # by workflow id

    def watch(self, attempt: Attempt, *, first_poll_s: float) -> None:
        """Start following `attempt` (state running, with a workflow id)."""
        if attempt.workflow_id is None:
            raise ValueError(f"attempt {attempt.id} has no workflow id to poll")
        cfg = self.engine.config
        first_s = max(first_poll_s, cfg.poll_min_s)
        self._watches[attempt.workflow_id] = Watch(
            attempt, anyio.current_time() + first_s, max(cfg.poll_min_s, first_s / 2)
        )
        self.engine.wake()

    def watched(self) -> int:
        return len(self._watches)

    def idle(self) -> bool:
        return not self._watches

    async def run(self) -> None:
        while True:
            now = anyio.current_time()
            due = [w for w in self._watches.values() if w.due_s <= now]
            if not due:
                nearest = min((w.due_s for w in self._watches.values()), default=now + 1.0)
                await self.engine.wait_wake(max(nearest - now, 0.001))
                continue
            try:
                # One page of the tag answers for every watched workflow it lists, so once
                # a few are watched a page is never more requests than a GET each.
                if len(self._watches) >= self.engine.config.bulk_poll_min:
                    await self._poll_bulk(due)
                else:
                    for watch in due:
                        await self._poll_one(watch)
            except ZbatchError as exc:  # auth, funds; or the disk or database refused a record
                self.engine.fail(exc)
                return

    async def _poll_one(self, watch: Watch) -> None:
        wf_id = watch.attempt.workflow_id
        assert wf_id is not None
        try:
            wf = await retrying(
                lambda: self.engine.client.get(wf_id),
                backoff=self.engine.backoff,
                what="poll",
                on_retry=self.engine.on_retry,
            )
        except NotFoundError:
            # Deleted by someone, or past the service's retention: nothing more will come.
            log.error("workflow_vanished", workflow=wf_id, cell=watch.attempt.cell_key)
            await self.engine.finish_vanished(watch.attempt)
            del self._watches[wf_id]
            return
        await self._seen(watch, wf)

    async def _poll_bulk(self, due: list[Watch]) -> None:
        wanted = {w.attempt.workflow_id: w for w in due}
        cursor: str | None = None
        while wanted:
            page = await self._page(cursor)
            for wf in page.items:
                watch = wanted.pop(wf.id or "", None)
                if watch is not None:
                    await self._seen(watch, wf)
                elif (other := self._watches.get(wf.id or "")) is not None:
                    await self._seen_early(other, wf)
            if page.next is None:
                break
            cursor = page.next
        for watch in wanted.values():  # not in the listing (yet): ask for each one
            await self._poll_one(watch)

    async def _page(self, cursor: str | None) -> WorkflowPage:
        async def call() -> WorkflowPage:
            return await self.engine.client.query(
                tags=[self.engine.config.tag], cursor=cursor, take=BULK_PAGE
            )

        return await retrying(
            call, backoff=self.engine.backoff, what="poll_bulk", on_retry=self.engine.on_retry
        )

    async def _seen_early(self, watch: Watch, wf: Workflow) -> None:
        """A page listed a watched workflow before it was due: the same news, for free.

        Terminal: recorded now. Still running: looked at again one interval from now, the
        interval not grown (it was not asked for), so the dues of workflows seen together
        fall together and the next page answers for all of them.
        """
        if wf.status.is_terminal:
            await self._seen(watch, wf)
        else:
            watch.due_s = anyio.current_time() + watch.interval_s

    async def _seen(self, watch: Watch, wf: Workflow) -> None:
        if wf.status.is_terminal and refund_pending(wf) and watch.settle_polls < SETTLE_POLLS:
            watch.settle_polls += 1  # the refund may be posted a moment after the status
        elif wf.status.is_terminal:
            await self.engine.finish(watch.attempt, wf)
            del self._watches[wf.id or ""]
            return
        cfg = self.engine.config
        watch.interval_s = min(
            cfg.poll_max_s, max(cfg.poll_min_s, watch.interval_s * BACKOFF_FACTOR)
        )
        watch.due_s = anyio.current_time() + watch.interval_s
