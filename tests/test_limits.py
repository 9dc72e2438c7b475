"""Pacing: the token bucket keeps its rate on a fake clock; backoff is jittered and capped."""

from __future__ import annotations

import random

import anyio
import pytest

from runner.engine._pacing import Backoff, RateLimiter, retrying
from runner.errors import RejectedError, RetryableError


class FakeTime:
    """A clock that only moves when somebody sleeps on it."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now_s += seconds


async def test_bucket_allows_rate_per_second_in_any_window() -> None:
    t = FakeTime()
    limiter = RateLimiter(20, burst=1, clock=t.clock, sleep=t.sleep)
    stamps = []
    with anyio.fail_after(5):
        for _ in range(200):
            await limiter.acquire()
            stamps.append(t.now_s)
    assert stamps[-1] == pytest.approx(199 / 20)
    for i in range(len(stamps) - 20):
        assert stamps[i + 20] - stamps[i] >= 1.0 - 1e-9  # never 21 in one second


async def test_bucket_halves_on_429_and_recovers_slowly() -> None:
    t = FakeTime()
    limiter = RateLimiter(10, clock=t.clock, sleep=t.sleep)
    limiter.slow_down()
    assert limiter.rate_per_s == 5
    for _ in range(10):
        limiter.speed_up()
    assert limiter.rate_per_s == pytest.approx(7)
    for _ in range(1000):
        limiter.speed_up()
    assert limiter.rate_per_s == 10


def test_backoff_full_jitter_is_bounded_and_capped() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0, rng=random.Random(1))
    draws = [backoff.delay_s(n) for n in range(12) for _ in range(50)]
    assert all(0 <= d <= 4.0 for d in draws)
    assert max(backoff.delay_s(0) for _ in range(200)) <= 0.5
    assert backoff.delay_s(3, retry_after_s=7) == 7
    assert backoff.delay_s(3, retry_after_s=10_000) == backoff.max_retry_after_s


async def test_retrying_waits_retry_after_then_succeeds() -> None:
    t = FakeTime()
    answers: list[object] = [RetryableError("429", retry_after_s=3), RetryableError("503"), "ok"]
    seen: list[RetryableError] = []

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    backoff = Backoff(base_s=1, rng=random.Random(0))
    with anyio.fail_after(5):
        got = await retrying(call, backoff=backoff, what="t", on_retry=seen.append, sleep=t.sleep)
    assert got == "ok"
    assert t.slept[0] == 3
    assert 0 <= t.slept[1] <= 2
    assert len(seen) == 2


async def test_retrying_gives_up_after_max_tries_and_never_retries_final_errors() -> None:
    t = FakeTime()
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise RetryableError("503")

    with anyio.fail_after(5):
        with pytest.raises(RetryableError):
            await retrying(flaky, backoff=Backoff(), what="t", max_tries=4, sleep=t.sleep)
        assert calls == 4

        async def rejected() -> None:
            raise RejectedError("400")

        with pytest.raises(RejectedError):
            await retrying(rejected, backoff=Backoff(), what="t", sleep=t.sleep)
    assert len(t.slept) == 3
