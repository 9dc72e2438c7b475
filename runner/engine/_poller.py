"""The poller: follows submitted workflows to a terminal status, in bulk where it pays.

Each running attempt has a due time: first near its model's expected finish (the seed's
runtime table), then backing off by half again up to `poll_max_s`. Once `bulk_poll_min`
workflows are watched, any due one makes the poller page through the batch's tag (newest
first, so it stops as soon as it has seen every due workflow), and the page also answers
for the watched workflows it lists that were not due yet: the finished ones are recorded,
the others are looked at again together. With fewer watched it GETs the due ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import anyio
import structlog

from runner.api import Client, Workflow, WorkflowPage, WorkflowStatus
from runner.engine._pacing import Retrier
from runner.errors import NotFoundError
from runner.store import Attempt

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


class Recorder(Protocol):
    """Where the poller hands the attempts it sees end (`runner.engine._outcomes.Outcomes`)."""

    async def finish(self, attempt: Attempt, wf: Workflow) -> None: ...

    async def finish_vanished(self, attempt: Attempt) -> None: ...


@dataclass(frozen=True)
class PollTiming:
    """When to look: first near the expected finish, then backing off up to `max_s`; by the
    batch's tag once `bulk_min` workflows are watched."""

    min_s: float = 0.05
    max_s: float = 30.0
    bulk_min: int = 8


class Poller:
    """Polls running attempts until each one is terminal, and hands it to `recorder`.

    An error it cannot retry (auth, funds; the disk or database refusing a record) is
    raised: it ends the run through the engine's task group.
    """

    def __init__(
        self, client: Client, retry: Retrier, recorder: Recorder, *, tag: str, timing: PollTiming
    ) -> None:
        self.client = client
        self.retry = retry
        self.recorder = recorder
        self.tag = tag
        self.timing = timing
        self._watches: dict[str, Watch] = {}  # by workflow id
        self._added = anyio.Event()  # set by `watch`: the schedule changed

    def watch(self, attempt: Attempt, *, first_poll_s: float) -> None:
        """Start following `attempt` (state running, with a workflow id)."""
        if attempt.workflow_id is None:
            raise ValueError(f"attempt {attempt.id} has no workflow id to poll")
        min_s = self.timing.min_s
        first_s = max(first_poll_s, min_s)
        self._watches[attempt.workflow_id] = Watch(
            attempt, anyio.current_time() + first_s, max(min_s, first_s / 2)
        )
        self._added.set()

    def watched(self) -> int:
        return len(self._watches)

    def idle(self) -> bool:
        return not self._watches

    async def run(self) -> None:
        while True:
            now = anyio.current_time()
            due = [w for w in self._watches.values() if w.due_s <= now]
            if not due:
                await self._until_due()
                continue
            # One page of the tag answers for every watched workflow it lists, so once
            # a few are watched a page is never more requests than a GET each.
            if len(self._watches) >= self.timing.bulk_min:
                await self._poll_bulk(due)
            else:
                for watch in due:
                    await self._poll_one(watch)

    async def _until_due(self) -> None:
        """Wait until the nearest watch is due, or a new one is added (none: until then)."""
        nearest = min((w.due_s for w in self._watches.values()), default=math.inf)
        with anyio.CancelScope(deadline=nearest):
            await self._added.wait()
        if self._added.is_set():
            self._added = anyio.Event()

    async def _poll_one(self, watch: Watch) -> None:
        wf_id = watch.attempt.workflow_id
        assert wf_id is not None
        try:
            wf = await self.retry.call(lambda: self.client.get(wf_id), what="poll")
        except NotFoundError:
            # Deleted by someone, or past the service's retention: nothing more will come.
            log.error("workflow_vanished", workflow=wf_id, cell=watch.attempt.cell_key)
            await self.recorder.finish_vanished(watch.attempt)
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
            return await self.client.query(tags=[self.tag], cursor=cursor, take=BULK_PAGE)

        return await self.retry.call(call, what="poll_bulk")

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
            await self.recorder.finish(watch.attempt, wf)
            del self._watches[wf.id or ""]
            return
        timing = self.timing
        watch.interval_s = min(timing.max_s, max(timing.min_s, watch.interval_s * BACKOFF_FACTOR))
        watch.due_s = anyio.current_time() + watch.interval_s
