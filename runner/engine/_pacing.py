"""Pacing: the submission rate limiter, backoff with full jitter, and Retry-After.

The one place in the engine that sleeps: the rate limiter between submissions, and
`Backoff.pause` between tries (of `retrying`, and of the downloaders' fetches). The engine's
other waits are for a condition (`runner.engine._shared.Changes`) or, in the poller, for the
next workflow's due time. A failing service slows a run down; it never loses work:
`retrying` repeats a call for as long as its errors are retryable, waiting what the service
asked (`Retry-After`) or an exponentially growing, fully jittered delay.

An outage is waited out, but not forever: `Outage` keeps when the service last stopped
answering (every call failing with a transport error, 408 or 5xx, none succeeding in
between). Once that has lasted 30 s (a flaky service's odd failed call is no outage), the
display and log.jsonl say "service unreachable since HH:MM, retrying"; after
`give_up_after_s` without a success the run stops with `ServiceOutage` (exit 130,
resumable). 429 is no outage: the service is there, asking us to slow down.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import anyio
import structlog

from runner.errors import RetryableError, ServiceOutage

T = TypeVar("T")
log = structlog.get_logger(__name__)
DEFAULT_GIVE_UP_AFTER_S = 6 * 3600.0  # an outage longer than this ends a run (resumable)
DECLARE_OUTAGE_AFTER_S = 30.0  # calls failing this long, none succeeding, make an outage


class RateLimiter:
    """A token bucket of `rate_per_s` that adapts: halves on 429, creeps back on success.

    `acquire()` waits for a token. `slow_down()` (after a 429) halves the current rate, never
    below `min_rate_per_s`; every `speed_up()` (after a success) adds 2% of the configured
    rate back, up to it. `clock` and `sleep` default to anyio's; tests pass fakes.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = anyio.current_time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, not {rate_per_s}")
        self.max_rate_per_s = rate_per_s
        self.rate_per_s = rate_per_s
        self.min_rate_per_s = min(rate_per_s, 0.05)
        self.burst = burst if burst is not None else max(1.0, rate_per_s)
        self._tokens = 1.0
        self._stamp: float | None = None
        self._lock = anyio.Lock()
        self._clock = clock
        self._sleep = sleep

    async def acquire(self) -> None:
        """Wait until a submission may go out, then take its token."""
        async with self._lock:
            while True:
                now = self._clock()
                if self._stamp is None:
                    self._stamp = now
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
                self._stamp = now
                if self._tokens >= 1.0 - 1e-9:  # float dust must not stall the loop
                    self._tokens -= 1.0
                    return
                await self._sleep((1.0 - self._tokens) / self.rate_per_s)

    def slow_down(self) -> None:
        self.rate_per_s = max(self.min_rate_per_s, self.rate_per_s / 2)
        self._tokens = min(self._tokens, 0.0)

    def speed_up(self) -> None:
        if self.rate_per_s < self.max_rate_per_s:
            step = self.max_rate_per_s * 0.02
            self.rate_per_s = min(self.max_rate_per_s, self.rate_per_s + step)


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2^n)).

    A service's `Retry-After` overrides the draw (capped at `max_retry_after_s`).
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = 300.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        ceiling = min(self.cap_s, self.base_s * (2 ** min(attempt, 30)))
        return self.rng.uniform(0.0, ceiling)

    async def pause(
        self,
        attempt: int,
        retry_after_s: float | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> float:
        """Sleep `delay_s(attempt, retry_after_s)` before the next try; return how long."""
        delay_s = self.delay_s(attempt, retry_after_s)
        await sleep(delay_s)
        return delay_s


def is_outage(exc: RetryableError) -> bool:
    """A failure that says the service is not there: no answer at all, 408 or a 5xx."""
    return exc.status is None or exc.status == 408 or exc.status >= 500


class Outage:
    """How long the service has failed every call, and the end of waiting for it.

    `failed` starts the clock at the first failure in a row; `succeeded` stops it. A few
    failures in a row are no outage (a flaky service fails a call now and then, and its
    retry goes through): an outage is declared, logged once as `service_unreachable` and
    shown by `describe`, only once calls have kept failing, none succeeding, for
    `declare_after_s` (30 s; sooner if `give_up_after_s` is shorter). `succeeded` logs
    `service_reachable_again` only after a declared outage. A failure `give_up_after_s` or
    more after the first one raises `ServiceOutage`. `clock` (monotonic seconds) and `now`
    (the wall time shown) are anyio's and the local time by default; tests pass fakes.
    """

    def __init__(
        self,
        give_up_after_s: float = DEFAULT_GIVE_UP_AFTER_S,
        *,
        clock: Callable[[], float] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now().astimezone(),
        declare_after_s: float = DECLARE_OUTAGE_AFTER_S,
    ) -> None:
        self.give_up_after_s = give_up_after_s
        self.declare_after_s = min(declare_after_s, give_up_after_s)
        self._clock = clock or anyio.current_time
        self._now = now
        self.since: datetime | None = None  # wall time of the first failure in a row
        self._started_s = 0.0
        self.declared = False  # whether `service_unreachable` was logged for this outage
        self.last_error = ""

    def describe(self) -> str | None:
        """`service unreachable since 02:13, retrying` once calls have failed for
        `declare_after_s` with none succeeding, else None."""
        if self.since is None:
            return None
        if not self.declared and self._clock() - self._started_s < self.declare_after_s:
            return None
        return f"service unreachable since {self.since:%H:%M}, retrying"

    def failed(self, exc: RetryableError) -> None:
        """Count `exc` toward the outage; raise `ServiceOutage` once it has lasted too long."""
        if not is_outage(exc):
            return
        now_s = self._clock()
        self.last_error = str(exc)
        if self.since is None:
            self.since, self._started_s = self._now(), now_s
        down_s = now_s - self._started_s
        if not self.declared and down_s >= self.declare_after_s:
            self.declared = True
            log.warning(
                "service_unreachable",
                since=f"{self.since:%H:%M}",
                give_up_after_s=self.give_up_after_s,
                error=self.last_error,
            )
        if down_s >= self.give_up_after_s:
            raise ServiceOutage(
                f"the service has been unreachable since {self.since:%H:%M} ({_hours(down_s)},"
                f" --give-up-after {_hours(self.give_up_after_s)}): the run stops; nothing is"
                f" lost, run the same command again to resume. Last error: {self.last_error}",
                status=exc.status,
                method=exc.method,
                url=exc.url,
                detail=exc.detail,
            )

    def succeeded(self) -> None:
        """A call went through: the failures in a row, and the outage if declared, are over."""
        if self.since is not None and self.declared:
            log.warning(
                "service_reachable_again",
                since=f"{self.since:%H:%M}",
                down_s=round(self._clock() - self._started_s, 1),
            )
        self.since, self.declared = None, False


def _hours(seconds: float) -> str:
    """`6h`, `1h30m`, `45s`: a duration as --give-up-after takes it."""
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return text or "0s"


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    what: str,
    max_tries: int | None = None,
    on_retry: Callable[[RetryableError], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    outage: Outage | None = None,
) -> T:
    """Await `call()` until it returns or raises a non-retryable error.

    Retryable errors are retried after `backoff`'s delay, forever unless `max_tries` is set
    (then the last error is raised) or `outage` gives up (`ServiceOutage`). `on_retry` sees
    each retried error (e.g. a 429 slows the rate limiter down). Other exceptions
    propagate at once.
    """
    tries = 0
    while True:
        try:
            result = await call()
        except RetryableError as exc:
            tries += 1
            if outage is not None:
                outage.failed(exc)
            if max_tries is not None and tries >= max_tries:
                raise
            if on_retry is not None:
                on_retry(exc)
            delay_s = backoff.delay_s(tries - 1, exc.retry_after_s)
            log.warning("retry", what=what, tries=tries, delay_s=round(delay_s, 3), error=str(exc))
            await sleep(delay_s)
            continue
        if outage is not None:
            outage.succeeded()
        return result


@dataclass(frozen=True)
class Retrier:
    """How the engine retries its API calls: one backoff, what a retry tells the run
    (`on_retry`: the engine counts it, and a 429 slows the submission rate down), and the
    run's `outage`, which ends the waiting after --give-up-after."""

    backoff: Backoff
    on_retry: Callable[[RetryableError], None] | None = None
    outage: Outage | None = None

    async def call(
        self, call: Callable[[], Awaitable[T]], *, what: str, max_tries: int | None = None
    ) -> T:
        """`retrying(call, ...)` with this backoff, `on_retry` and `outage`."""
        return await retrying(
            call,
            backoff=self.backoff,
            what=what,
            max_tries=max_tries,
            on_retry=self.on_retry,
            outage=self.outage,
        )
