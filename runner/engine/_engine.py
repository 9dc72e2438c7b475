"""The engine: submitter, poller and downloaders in one task group around the store.

The store is the single source of truth; memory only holds what makes the next step fast
(when to poll what, fresh blob URLs). So the engine can be killed at any instant and started
again: intents left in `submitting` are resubmitted with the same externalId (the API hands
back the workflow it may already have created), `running` attempts are polled, `pending`
images are downloaded. See docs/states.md for who moves each edge.

Each part gets only what it needs (`Submitter`, `Poller`, `Downloader`, `Outcomes`); they
wait for one another on change notices (`Changes`), never on a timer. A part that cannot go
on raises: the task group cancels the others and carries the error out of `Engine.run`,
which is where it is turned, once, into the one zbatch error the run stops with.
"""

from __future__ import annotations

import functools
import random
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog

from runner.api import Client
from runner.engine._claiming import ClaimingSubmitter
from runner.engine._downloader import Downloader, ImageFetcher
from runner.engine._outcomes import Outcomes
from runner.engine._outcomes import charge_of as charge_of
from runner.engine._outcomes import image_outcomes as image_outcomes
from runner.engine._outcomes import outcome_of as outcome_of
from runner.engine._outcomes import reason_of as reason_of
from runner.engine._pacing import DEFAULT_GIVE_UP_AFTER_S, Backoff, Outage, RateLimiter, Retrier
from runner.engine._poller import Poller, PollTiming
from runner.engine._shared import Changes
from runner.engine._shared import RunStats as RunStats
from runner.engine._submitter import Submitter
from runner.errors import RetryableError, ZbatchError
from runner.store import Store, Worker

log = structlog.get_logger(__name__)
Companion = Callable[[], Coroutine[Any, Any, None]]


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
    backoff_base_s: float = 0.5  # retries wait uniform(0, min(cap, base * 2^n))
    backoff_cap_s: float = 30.0
    seed: int = 0  # jitter
    give_up_after_s: float = DEFAULT_GIVE_UP_AFTER_S  # an outage this long ends the run
    outage_clock: Callable[[], float] | None = None  # monotonic seconds (tests: a fake)


class Engine:
    """Drive one batch to completion (or to its cap, or to a stop) against one API client."""

    def __init__(
        self, store: Store, client: Client, config: EngineConfig, worker: Worker | None = None
    ) -> None:
        """`worker`: one of several draining the batch (`zbatch worker`): it claims what it
        submits, heartbeats, and takes over dead workers' attempts (`ClaimingSubmitter`)."""
        self.store = store
        self.worker = worker
        self.client = client
        self.config = config
        self.stats = RunStats()
        self.changes = Changes()
        backoff = Backoff(
            base_s=config.backoff_base_s, cap_s=config.backoff_cap_s, rng=random.Random(config.seed)
        )
        # Paced, never bursting (burst 1: an idle moment must not let `rate` go at once),
        # 2% under the rate: the service counts arrivals, which jitter by milliseconds,
        # and exact pacing would let a 1 s window catch rate + 1 of them.
        self.limiter = RateLimiter(config.submit_per_s * 0.98, burst=1.0)
        self.slots = anyio.CapacityLimiter(config.in_flight)
        self.outage = Outage(config.give_up_after_s, clock=config.outage_clock)
        retry = Retrier(backoff, on_retry=self._on_retry, outage=self.outage)
        self.downloader = Downloader(
            store,
            ImageFetcher(client, backoff, max_bytes=config.max_image_bytes, outage=self.outage),
            out_dir=config.out_dir,
            workers=config.downloads,
            stats=self.stats,
            changes=self.changes,
        )
        self.outcomes = Outcomes(
            store,
            slots=self.slots,
            stats=self.stats,
            changes=self.changes,
            remember_urls=self.downloader.remember_urls,
        )
        timing = PollTiming(config.poll_min_s, config.poll_max_s, config.bulk_poll_min)
        self.poller = Poller(client, retry, self.outcomes, tag=config.tag, timing=timing)
        submitter: Callable[..., Submitter] = Submitter
        if worker is not None:
            submitter = functools.partial(ClaimingSubmitter, worker=worker)
        self.submitter = submitter(
            store,
            client,
            retry,
            limiter=self.limiter,
            slots=self.slots,
            poller=self.poller,
            outcomes=self.outcomes,
            stats=self.stats,
            changes=self.changes,
            tag=config.tag,
            runtime_scale=config.runtime_scale,
        )

    @property
    def stopping(self) -> bool:
        return self.submitter.stopping

    async def run(
        self, *, handle_signals: bool = False, companions: Sequence[Companion] = ()
    ) -> RunStats:
        """Run until every cell is finished and every image is on disk, or a stop.

        `companions` run beside the engine's parts and are cancelled with them (the live
        display, the dataset's refresh); an error of theirs stops the run as the parts' do.
        An error that stops the run (auth or funds; the disk full or read-only, the
        database locked or damaged) is raised as the one zbatch error it is, the first if
        several parts failed, never as an exception group: nothing more is submitted, and
        the record is whole. Any other exception (a bug) comes out as itself, in its group.
        """
        try:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(self._watch_signals, tg.cancel_scope)
                for companion in companions:
                    tg.start_soon(companion)
                if self.worker is not None:
                    tg.start_soon(self._heartbeat, self.worker)
                tg.start_soon(self.poller.run)
                tg.start_soon(self.downloader.run)
                await self.submitter.run(tg)
                await self._until_done()
                tg.cancel_scope.cancel()
        except* ZbatchError as group:
            raise self._stopped_by(group) from None  # the part's own error, unwrapped
        return self.stats

    async def _heartbeat(self, worker: Worker) -> None:
        """Renew the worker's lease every third of it and sweep the dead (`LeaseLost`, which
        ends the run, when this one was declared dead); wake the submitter to claim."""
        while True:
            await anyio.sleep(worker.heartbeat_s)
            if await worker.heartbeat():
                self.changes.notify()  # orphans to take over

    def request_stop(self, reason: str) -> None:
        """Submit nothing more; let in-flight workflows and downloads finish."""
        self.stats.stop_reason = reason
        log.warning("stopping", reason=reason, deadline_s=self.config.stop_deadline_s)
        self.submitter.stop()

    async def _until_done(self) -> None:
        """Wait until no attempt is in flight and no image is being fetched or waits to be."""
        while True:
            changed = self.changes.notice()
            idle = self.slots.borrowed_tokens == 0 and self.poller.idle()
            if idle and self.downloader.idle() and not await self.store.pending_images(1):
                return
            await changed.wait()

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        """The first SIGINT/SIGTERM stops submitting and gives in-flight work
        `stop_deadline_s` (the run's deadline); the second stops at once."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stopping:
                    log.warning("stop_now", signal=name)
                    scope.cancel()
                    return
                self.request_stop(f"{name}: finishing in-flight work")
                scope.deadline = anyio.current_time() + self.config.stop_deadline_s

    def _stopped_by(self, group: BaseExceptionGroup[ZbatchError]) -> ZbatchError:
        """The error a failed run stops with: the first its parts raised."""
        exc = first_of(group)
        self.stats.stop_reason = str(exc)
        log.error("run_stopped", error=str(exc))
        return exc

    def _on_retry(self, exc: RetryableError) -> None:
        self.stats.retries += 1
        if exc.status == 429:
            self.limiter.slow_down()


def first_of(group: BaseExceptionGroup[ZbatchError]) -> ZbatchError:
    """The first error of `group`, through nested groups."""
    found: ZbatchError | BaseExceptionGroup[ZbatchError] = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found
