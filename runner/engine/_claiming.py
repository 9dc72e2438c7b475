"""The submitter of a worker (`zbatch worker`): claims instead of reserving.

One of several workers draining one batch (docs/design/scale-out.md, sections 3-4). Where
the single runner's `Submitter` reads planned attempts and reserves them, this one asks the
store for a claim (`Worker.claim`): the orphans of dead workers and the next planned
attempts, reserved at the submitter's price within the batch's in-flight total across all
workers and the cap, in one transaction committed before any request leaves. A `submitting`
orphan is resubmitted with its externalId (the service answers with the workflow it made,
if it made one), a `running` one is polled, one ended with images to fetch is left to the
downloader (which fetches only its owner's images). It waits for a change of its own or a
heartbeat (other workers' progress is seen only in the database), and ends when nothing in
the batch is planned or in flight, or the cap binds with nothing in flight anywhere.
"""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from runner.engine._submitter import NEXT_PLANNED, Submitter
from runner.store import Attempt, AttemptState, Worker

log = structlog.get_logger(__name__)


class ClaimingSubmitter(Submitter):
    """A worker's submitter: claims (orphans first), submits, until the batch is drained."""

    def __init__(self, *args: Any, worker: Worker, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker = worker

    async def run(self, tg: TaskGroup) -> None:
        """Claim and submit (in `tg`) until the batch is drained, the cap binds everywhere,
        or a stop."""
        while not self.stopping:
            changed = self.changes.notice()
            total = int(self.slots.total_tokens)
            free = total - self.slots.borrowed_tokens
            peek = await self.store.next_planned(min(max(free, 0), NEXT_PLANNED))
            priced = [(a.id, await self.estimate(a)) for a in peek]
            claimed = await self.worker.claim(total, max(free, 0), priced)
            for attempt, _ in claimed.orphans:
                self._take_over(tg, attempt)
            for attempt, _ in claimed.planned:
                self._hold(attempt)
                await self.limiter.acquire()
                tg.start_soon(self._submit, attempt)
            if claimed.planned or claimed.orphans:
                continue
            if await self._drained(peek_empty=free > 0 and not peek):
                return
            with anyio.move_on_after(self.worker.heartbeat_s):
                await changed.wait()  # an end of ours, or a heartbeat's look at the others

    def _hold(self, attempt: Attempt) -> None:
        """A slot for `attempt` (lent when an orphan leaves none free)."""
        if self.slots.borrowed_tokens >= self.slots.total_tokens:
            self.slots.total_tokens = self.slots.borrowed_tokens + 1
        self.slots.acquire_on_behalf_of_nowait(attempt.id)

    def _take_over(self, tg: TaskGroup, attempt: Attempt) -> None:
        """Go on with a dead worker's attempt as `--adopt` would: resubmit an intent by its
        externalId, poll a running workflow; an ended one only has images to fetch."""
        log.info("orphan_taken_over", cell=attempt.cell_key, attempt=attempt.attempt,
                 state=str(attempt.state))  # fmt: skip
        if attempt.state is AttemptState.SUBMITTING:
            self._hold(attempt)
            tg.start_soon(self._submit, attempt, True)
        elif attempt.state is AttemptState.RUNNING:
            self._hold(attempt)
            self.poller.watch(attempt, first_poll_s=0.0)
        else:
            self.changes.notify()  # the downloader: images of an attempt now ours

    async def _drained(self, *, peek_empty: bool) -> bool:
        """Whether this worker is done: nothing of its own in flight, and nothing in the
        batch planned (`peek_empty`, or the cap binds) nor in flight (another worker's
        attempt may yet plan a retry, or be orphaned)."""
        if self.slots.borrowed_tokens or not self.poller.idle():
            return False
        if await self.store.active():
            return False
        if peek_empty:
            return not await self.store.next_planned(1)
        budget = await self.store.budget()
        planned = await self.store.next_planned(1)
        if planned and budget.committed_buzz + await self.estimate(planned[0]) > budget.cap_buzz:
            self.stats.cap_reached = True
            return True
        return not planned
