"""Pacing: the submission rate limiter, backoff with full jitter, and Retry-After.

The one place in the engine that sleeps: the rate limiter between submissions, and
`Backoff.pause` between tries (of `retrying`, and of the downloaders' fetches). The engine's
other waits are for a condition (`runner.engine._shared.Changes`) or, in the poller, for the
next workflow's due time. A failing service slows a run down; it never loses work:
`retrying` repeats a call for as long as its errors are retryable, waiting what the service
asked (`Retry-After`) or an exponentially growing, fully jittered delay.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import structlog

from runner.errors import RetryableError

T = TypeVar("T")
log = structlog.get_logger(__name__)


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


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    what: str,
    max_tries: int | None = None,
    on_retry: Callable[[RetryableError], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> T:
    """Await `call()` until it returns or raises a non-retryable error.

    Retryable errors are retried after `backoff`'s delay, forever unless `max_tries` is set
    (then the last error is raised). `on_retry` sees each retried error (e.g. a 429 slows
    the rate limiter down). Other exceptions propagate at once.
    """
    tries = 0
    while True:
        try:
            return await call()
        except RetryableError as exc:
            tries += 1
            if max_tries is not None and tries >= max_tries:
                raise
            if on_retry is not None:
                on_retry(exc)
            delay_s = backoff.delay_s(tries - 1, exc.retry_after_s)
            log.warning("retry", what=what, tries=tries, delay_s=round(delay_s, 3), error=str(exc))
            await sleep(delay_s)


@dataclass(frozen=True)
class Retrier:
    """How the engine retries its API calls: one backoff, and what a retry tells the run
    (`on_retry`: the engine counts it, and a 429 slows the submission rate down)."""

    backoff: Backoff
    on_retry: Callable[[RetryableError], None] | None = None

    async def call(
        self, call: Callable[[], Awaitable[T]], *, what: str, max_tries: int | None = None
    ) -> T:
        """`retrying(call, ...)` with this backoff and `on_retry`."""
        return await retrying(
            call, backoff=self.backoff, what=what, max_tries=max_tries, on_retry=self.on_retry
        )
