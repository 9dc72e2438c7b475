"""The engine: submitter, poller and downloaders in one task group around the store.

The store is the single source of truth; memory only holds what makes the next step fast
(when to poll what, fresh blob URLs). So the engine can be killed at any instant and started
again: intents left in `submitting` are resubmitted with the same externalId (the API hands
back the workflow it may already have created), `running` attempts are polled, `pending`
images are downloaded. See docs/states.md for who moves each edge.
"""

from __future__ import annotations

import dataclasses
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from runner.api._client import Client
from runner.api._models import Workflow, WorkflowStatus
from runner.contract import _zimage as zimage
from runner.disk._faults import translate
from runner.engine._downloader import Downloader
from runner.engine._pacing import Backoff, RateLimiter, retrying
from runner.engine._poller import Poller, refund_pending
from runner.errors import (
    ApiError,
    AuthError,
    FundsError,
    RejectedError,
    RetryableError,
    ZbatchError,
)
from runner.store._rows import Attempt, AttemptState, ImageOutcome
from runner.store._store import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """How the engine paces itself. Limits come from the manifest or the command line."""

    tag: str  # the batch's API tag, e.g. "zbatch:cabins-v1"
    out_dir: Path
    in_flight: int = 8  # workflows submitted and not yet terminal
    submit_per_s: float = 2.0
    downloads: int = 4
    max_image_bytes: int = 64 * 1024 * 1024
    runtime_scale: float = 1.0  # scales the seed's runtime table (an emulator's time_scale)
    poll_min_s: float = 0.05
    poll_max_s: float = 30.0
    bulk_poll_min: int = 8  # poll by tag when at least this many workflows are due
    stop_deadline_s: float = 20.0  # Ctrl-C: how long in-flight work may finish
    idle_check_s: float = 0.05
    backoff_base_s: float = 0.5  # retries wait uniform(0, min(cap, base * 2^n))
    backoff_cap_s: float = 30.0
    seed: int = 0  # jitter


@dataclass
class RunStats:
    """What this run did, for the display and the summary (the store has the full record)."""

    submitted: int = 0
    resubmitted: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    images_downloaded: int = 0
    images_lost: int = 0
    retries: int = 0
    cap_reached: bool = False
    stop_reason: str | None = None


class Engine:
    """Drive one batch to completion (or to its cap, or to a stop) against one API client."""

    def __init__(self, store: Store, client: Client, config: EngineConfig) -> None:
        self.store = store
        self.client = client
        self.config = config
        self.stats = RunStats()
        self.backoff = Backoff(
            base_s=config.backoff_base_s, cap_s=config.backoff_cap_s, rng=random.Random(config.seed)
        )
        # Paced, never bursting (burst 1: an idle moment must not let `rate` go at once),
        # 2% under the rate: the service counts arrivals, which jitter by milliseconds,
        # and exact pacing would let a 1 s window catch rate + 1 of them.
        self.limiter = RateLimiter(config.submit_per_s * 0.98, burst=1.0)
        self.slots = anyio.CapacityLimiter(config.in_flight)
        self.poller = Poller(self)
        self.downloader = Downloader(self)
        self.submitting_done = False
        self.stopping = False
        self._fatal: BaseException | None = None
        self._wake = anyio.Event()
        self._prices: dict[str, int] = {}  # whatif price per request shape

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = False) -> RunStats:
        """Run until every cell is finished and every image is on disk, or a stop.

        A failure of the machine (the disk full or read-only, the database locked or
        damaged) stops the run like an auth error: nothing more is submitted, and it is
        raised as its zbatch error (`runner.disk._faults`), never as an exception group.
        """
        try:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(self._watch_signals, tg)
                await self._resume(tg)
                tg.start_soon(self._submitter, tg)
                tg.start_soon(self.poller.run)
                tg.start_soon(self.downloader.run, tg)
                await self._wait_done()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # a task ended with an error (a download's disk)
            found = translate(group, db=self.store.path)
            if found is None:
                raise
            self.fail(found)
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def wake(self) -> None:
        """Tell every waiting task that the store changed."""
        self._wake.set()
        self._wake = anyio.Event()

    async def wait_wake(self, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            await self._wake.wait()

    def fail(self, exc: BaseException) -> None:
        """Stop the run for good (auth, funds, an unexpected answer); nothing is lost."""
        if self._fatal is None:
            self._fatal = exc
            self.stats.stop_reason = str(exc)
            log.error("run_stopped", error=str(exc))
        self.stopping = True
        self.wake()

    async def _wait_done(self) -> None:
        while True:
            if self._fatal is not None:
                return
            idle = self.poller.idle() and self.downloader.idle()
            if self.submitting_done and idle and not await self.store.pending_images(1):
                return
            await self.wait_wake(self.config.idle_check_s)

    async def _watch_signals(self, tg: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopping:
                    log.warning("stop_now", signal=signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return
                self.request_stop(f"{signal.Signals(signum).name}: finishing in-flight work")
                tg.start_soon(self._deadline, tg)

    def request_stop(self, reason: str) -> None:
        """Submit nothing more; let in-flight workflows and downloads finish."""
        self.stopping = True
        self.stats.stop_reason = reason
        log.warning("stopping", reason=reason, deadline_s=self.config.stop_deadline_s)
        self.wake()

    async def _deadline(self, tg: TaskGroup) -> None:
        await anyio.sleep(self.config.stop_deadline_s)
        tg.cancel_scope.cancel()

    # -- submitter ----------------------------------------------------------------------

    async def _resume(self, tg: TaskGroup) -> None:
        """Pick up what a previous run left: resubmit intents, poll running workflows."""
        active = await self.store.active()
        # Each one holds a slot until it ends, even when a lowered --concurrency leaves more
        # of them than slots: lend the extra slots now, then shrink back, so new submissions
        # wait until the total is under the limit again.
        self.slots.total_tokens = max(self.config.in_flight, len(active))
        for attempt in active:
            self.slots.acquire_on_behalf_of_nowait(attempt.id)
        self.slots.total_tokens = self.config.in_flight
        for attempt in active:
            if attempt.state is AttemptState.SUBMITTING:
                self.stats.resubmitted += 1
                tg.start_soon(self._submit, attempt)
            else:
                self.poller.watch(attempt, first_poll_s=0.0)

    async def _submitter(self, tg: TaskGroup) -> None:
        try:
            while not self.stopping:
                batch = await self.store.next_planned(64)
                if not batch:
                    if self.poller.idle() and not self._submits_in_flight():
                        if not await self.store.next_planned(1):
                            return  # nothing planned and nothing that could plan a retry
                        continue
                    await self.wait_wake(1.0)
                    continue
                for attempt in batch:
                    if not await self._start_one(tg, attempt):
                        return
        except ZbatchError as exc:  # auth or funds on a whatif, or the database refused an
            self.fail(exc)  # intent: stop, nothing is lost (an intent not on disk is not sent)
        finally:
            self.submitting_done = True
            self.wake()

    def _submits_in_flight(self) -> bool:
        return self.slots.borrowed_tokens > self.poller.watched()

    async def _start_one(self, tg: TaskGroup, attempt: Attempt) -> bool:
        """Reserve budget and a slot for `attempt` and submit it; False ends submitting."""
        await self.slots.acquire_on_behalf_of(attempt.id)
        while True:
            if self.stopping:
                self.slots.release_on_behalf_of(attempt.id)
                return False
            if await self.store.reserve(attempt.id, await self.estimate(attempt)):
                break
            if self.slots.borrowed_tokens <= 1:  # nothing in flight can free budget
                self.slots.release_on_behalf_of(attempt.id)
                self.stats.cap_reached = True
                return False
            await self.wait_wake(1.0)  # a refund or a cheaper charge may free budget
        await self.limiter.acquire()
        self.stats.submitted += 1
        tg.start_soon(self._submit, attempt)
        return True

    async def estimate(self, attempt: Attempt) -> int:
        """What to reserve for `attempt`: the higher of the formula and the service's price.

        The service is asked once per distinct shape (`whatif=true`, never with a cell's
        externalId), so the reservation covers what it will really charge, LoRA fees
        included, and the cap holds even where the formula is low.
        """
        shape = shape_of(attempt.request)
        if shape not in self._prices:
            steps = [{"$type": "imageGen", "input": zimage.step_input(attempt.request)}]
            try:
                preview = await retrying(
                    lambda: self.client.submit(steps, whatif=True),
                    backoff=self.backoff,
                    what="whatif",
                    max_tries=5,
                    on_retry=self.on_retry,
                )
                self._prices[shape] = preview.cost_total or 0
            except (RetryableError, RejectedError) as exc:
                log.warning("whatif_failed", error=str(exc))
                self._prices[shape] = 0
        return max(attempt.estimate_buzz, self._prices[shape])

    async def _submit(self, attempt: Attempt) -> None:
        try:
            await self._submit_and_record(attempt)
        except ZbatchError as exc:  # the disk or the database refused the record: the
            self.fail(exc)  # attempt stays submitting; the next run resubmits its externalId

    async def _submit_and_record(self, attempt: Attempt) -> None:
        steps = [{"$type": "imageGen", "input": zimage.step_input(attempt.request)}]
        metadata = {"zbatch": {"cell": attempt.cell_key, "attempt": attempt.attempt}}

        async def call() -> Workflow:
            return await self.client.submit(
                steps, external_id=attempt.external_id, tags=[self.config.tag], metadata=metadata
            )

        try:
            wf = await retrying(call, backoff=self.backoff, what="submit", on_retry=self.on_retry)
        except RejectedError as exc:
            await self.store.mark_rejected(attempt.id, str(exc))
            self.count_finished(AttemptState.REJECTED)
            self.release(attempt.id)
            return
        except (AuthError, FundsError, ApiError) as exc:
            self.fail(exc)
            return
        if wf.id is None:
            self.fail(ApiError(f"submit of {attempt.external_id} returned a preview, no id"))
            return
        self.limiter.speed_up()
        charged = charge_of(wf, fallback_buzz=attempt.estimate_buzz)
        await self.store.mark_running(attempt.id, wf.id, charged)
        log.info("cell_submitted", cell=attempt.cell_key, attempt=attempt.attempt, workflow=wf.id)
        running = dataclasses.replace(  # what mark_running wrote, without reading it back
            attempt,
            state=AttemptState.RUNNING,
            workflow_id=wf.id,
            reserved_buzz=0,
            charged_buzz=charged,
        )
        if wf.status.is_terminal and not refund_pending(wf):
            await self.finish(running, wf)
        else:
            low_s, _ = zimage_runtime(attempt)
            self.poller.watch(running, first_poll_s=low_s * self.config.runtime_scale)

    def on_retry(self, exc: RetryableError) -> None:
        self.stats.retries += 1
        if exc.status == 429:
            self.limiter.slow_down()

    # -- outcomes -----------------------------------------------------------------------

    async def finish(self, attempt: Attempt, wf: Workflow) -> None:
        """Record a terminal workflow; hand its images to the downloaders."""
        outcome = outcome_of(wf)
        images = image_outcomes(wf)
        charged = charge_of(wf, fallback_buzz=attempt.charged_buzz, final=True)
        retry = await self.store.mark_finished(
            attempt.id,
            outcome,
            charged_buzz=charged,
            images=images,
            reason=reason_of(wf, outcome),
        )
        self.downloader.remember_urls(attempt.id, wf)
        self.count_finished(outcome)
        log.info(
            "cell_finished",
            cell=attempt.cell_key,
            attempt=attempt.attempt,
            outcome=str(outcome),
            charged_buzz=charged,
            retry=retry is not None,
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
        self.count_finished(AttemptState.CANCELED)
        self.release(attempt.id)

    def release(self, attempt_id: int) -> None:
        self.slots.release_on_behalf_of(attempt_id)
        self.wake()

    def count_finished(self, outcome: AttemptState) -> None:
        self.stats.finished[outcome.value] = self.stats.finished.get(outcome.value, 0) + 1


def zimage_runtime(attempt: Attempt) -> tuple[float, float]:
    """The seed table's (low, high) seconds for an attempt's request."""
    r: dict[str, Any] = attempt.request
    return zimage.runtime_s(
        model=attempt.model,
        width=int(r["width"]),
        height=int(r["height"]),
        steps=int(r["steps"]),
        quantity=int(r["quantity"]),
    )


def shape_of(request: dict[str, Any]) -> str:
    """What the price depends on: model, size, steps, quantity and LoRAs (fees)."""
    loras = sorted(zimage.lora_dict(request.get("loras") or {}).items())
    return repr(
        (request["model"], request["width"], request["height"], request["steps"],
         request["quantity"], loras)
    )  # fmt: skip


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
