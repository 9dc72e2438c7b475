"""The submitter: each planned attempt gets its budget and a slot, then is sent exactly once.

An attempt is sent only after `Store.reserve_many` has written its intent (state `submitting`,
its estimate reserved under the cap) and a slot of `in_flight` is held for it. The free slots
are taken together and their intents reserved in one transaction (one commit for them all).
A slot is released when its attempt ends (`Outcomes`). The submit carries the attempt's
externalId, so resubmitting an intent a crash left behind hands back the workflow the
service already made. An error it cannot retry (auth, funds, an unexpected answer; the
database refusing a record) is raised: the engine's task group ends the run with it, and
the intent stays on disk.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from runner import contract
from runner.api import Client, Workflow
from runner.engine._outcomes import Outcomes, charge_of
from runner.engine._pacing import RateLimiter, Retrier
from runner.engine._poller import Poller, refund_pending
from runner.engine._shared import Changes, RunStats
from runner.errors import ApiError, RejectedError, RetryableError
from runner.identity import workflow_metadata
from runner.store import Attempt, AttemptState, Store

log = structlog.get_logger(__name__)
NEXT_PLANNED = 64  # planned attempts read from the store at a time


class Submitter:
    """Submits the batch's planned attempts until none is left, the cap binds, or a stop."""

    def __init__(
        self,
        store: Store,
        client: Client,
        retry: Retrier,
        *,
        limiter: RateLimiter,
        slots: anyio.CapacityLimiter,
        poller: Poller,
        outcomes: Outcomes,
        stats: RunStats,
        changes: Changes,
        tag: str,
        runtime_scale: float,
    ) -> None:
        self.store = store
        self.client = client
        self.retry = retry
        self.limiter = limiter
        self.slots = slots
        self.poller = poller
        self.outcomes = outcomes
        self.stats = stats
        self.changes = changes
        self.tag = tag
        self.runtime_scale = runtime_scale
        self.stopping = False
        self._prices: dict[str, int] = {}  # whatif price per request shape

    def stop(self) -> None:
        """Submit nothing more (what is in flight goes on)."""
        self.stopping = True
        self.changes.notify()

    async def run(self, tg: TaskGroup) -> None:
        """Pick up what a previous run left, then submit (in `tg`) until nothing is planned
        and nothing in flight could plan a retry, or the cap or a stop ends submitting."""
        await self._resume(tg)
        while not self.stopping:
            changed = self.changes.notice()
            batch = await self.store.next_planned(NEXT_PLANNED)
            if not batch:
                if self.poller.idle() and not self._submits_in_flight():
                    if not await self.store.next_planned(1):
                        return  # nothing planned and nothing that could plan a retry
                    continue
                await changed.wait()  # an attempt that ends may plan its cell's retry
                continue
            while batch:
                started = await self._start_some(tg, batch)
                if not started:
                    return
                batch = batch[started:]

    async def _resume(self, tg: TaskGroup) -> None:
        """Resubmit the intents a previous run left; poll its running workflows."""
        active = await self.store.active()
        # Each one holds a slot until it ends, even when a lowered --concurrency leaves more
        # of them than slots: lend the extra slots now, then shrink back, so new submissions
        # wait until the total is under the limit again.
        in_flight = self.slots.total_tokens
        self.slots.total_tokens = max(in_flight, len(active))
        for attempt in active:
            self.slots.acquire_on_behalf_of_nowait(attempt.id)
        self.slots.total_tokens = in_flight
        for attempt in active:
            if attempt.state is AttemptState.SUBMITTING:
                tg.start_soon(self._submit, attempt, True)
            else:
                self.poller.watch(attempt, first_poll_s=0.0)

    def _submits_in_flight(self) -> bool:
        return self.slots.borrowed_tokens > self.poller.watched()

    async def _start_some(self, tg: TaskGroup, attempts: list[Attempt]) -> int:
        """Reserve budget and slots for the first of `attempts` and as many more as slots are
        free now, in one transaction (`Store.reserve_many`), then submit them; how many
        started (0 ends submitting). Each is sent only after `reserve_many` returned, that
        is after the COMMIT that made its intent durable."""
        first = attempts[0]
        await self.slots.acquire_on_behalf_of(first.id)
        taken = [first]
        for attempt in attempts[1:]:
            try:
                self.slots.acquire_on_behalf_of_nowait(attempt.id)
            except anyio.WouldBlock:
                break
            taken.append(attempt)
        while True:
            if self.stopping:
                self._release(taken)
                return 0
            changed = self.changes.notice()
            items = [(a.id, await self.estimate(a)) for a in taken]
            reserved = len(await self.store.reserve_many(items))
            self._release(taken[max(reserved, 1) :])  # the first keeps its slot while it waits
            if reserved:
                for attempt in taken[:reserved]:
                    await self.limiter.acquire()
                    tg.start_soon(self._submit, attempt)
                return reserved
            taken = [first]
            if self.slots.borrowed_tokens <= 1:  # nothing in flight can free budget
                self._release(taken)
                self.stats.cap_reached = True
                return 0
            await changed.wait()  # a refund or a cheaper charge may free budget

    def _release(self, attempts: list[Attempt]) -> None:
        for attempt in attempts:
            self.slots.release_on_behalf_of(attempt.id)

    async def estimate(self, attempt: Attempt) -> int:
        """What to reserve for `attempt`: the higher of the formula and the service's price.

        The service is asked once per distinct shape (`whatif=true`, never with a cell's
        externalId), so the reservation covers what it will really charge, LoRA fees
        included, and the cap holds even where the formula is low.
        """
        shape = shape_of(attempt.request)
        if shape not in self._prices:
            steps = [{"$type": "imageGen", "input": contract.step_input(attempt.request)}]
            try:
                preview = await self.retry.call(
                    lambda: self.client.submit(steps, whatif=True), what="whatif", max_tries=5
                )
                self._prices[shape] = preview.cost_total or 0
            except (RetryableError, RejectedError) as exc:
                log.warning("whatif_failed", error=str(exc))
                self._prices[shape] = 0
        return max(attempt.estimate_buzz, self._prices[shape])

    async def _submit(self, attempt: Attempt, resumed: bool = False) -> None:
        """Send the intent; record the workflow running (or ended), or the service's 400.

        Counted `submitted` (`resubmitted` for a previous run's intent) only once the service
        has acknowledged it: an intent still being retried is not submitted yet."""
        steps = [{"$type": "imageGen", "input": contract.step_input(attempt.request)}]
        metadata = workflow_metadata(attempt.cell_key, attempt.attempt)

        async def call() -> Workflow:
            return await self.client.submit(
                steps, external_id=attempt.external_id, tags=[self.tag], metadata=metadata
            )

        try:
            wf = await self.retry.call(call, what="submit")
        except RejectedError as exc:
            await self.outcomes.rejected(attempt, str(exc))
            return
        if wf.id is None:
            raise ApiError(f"submit of {attempt.external_id} returned a preview, no id")
        self.limiter.speed_up()
        charged = charge_of(wf, fallback_buzz=attempt.estimate_buzz)
        running = dataclasses.replace(  # what mark_running writes, without reading it back
            attempt,
            state=AttemptState.RUNNING,
            workflow_id=wf.id,
            reserved_buzz=0,
            charged_buzz=charged,
        )
        if wf.status.is_terminal and not refund_pending(wf):
            # The answer is the end already: running and finished in one transition.
            ended = await self.outcomes.record(running, wf, running=(wf.id, charged))
            self._acknowledged(attempt, wf.id, resumed)
            self.outcomes.finished(running, wf, ended)
            return
        await self.store.mark_running(attempt.id, wf.id, charged)
        self._acknowledged(attempt, wf.id, resumed)
        low_s, _ = zimage_runtime(attempt)
        self.poller.watch(running, first_poll_s=low_s * self.runtime_scale)

    def _acknowledged(self, attempt: Attempt, workflow_id: str, resumed: bool) -> None:
        """Count and log a submit the record now holds as sent (running, or ended)."""
        if resumed:
            self.stats.resubmitted += 1
        else:
            self.stats.submitted += 1
        self.changes.notify()  # the reservation became the charge: budget may be free
        log.info(
            "cell_submitted", cell=attempt.cell_key, attempt=attempt.attempt, workflow=workflow_id
        )


def zimage_runtime(attempt: Attempt) -> tuple[float, float]:
    """The seed table's (low, high) seconds for an attempt's request."""
    r: dict[str, Any] = attempt.request
    return contract.runtime_s(
        model=attempt.model,
        width=int(r["width"]),
        height=int(r["height"]),
        steps=int(r["steps"]),
        quantity=int(r["quantity"]),
    )


def shape_of(request: dict[str, Any]) -> str:
    """What the price depends on: model, size, steps, quantity and LoRAs (fees)."""
    loras = sorted(contract.lora_dict(request.get("loras") or {}).items())
    return repr(
        (request["model"], request["width"], request["height"], request["steps"],
         request["quantity"], loras)
    )  # fmt: skip
