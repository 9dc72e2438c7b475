"""An outage is declared only after calls have failed for a while (runner/engine/_pacing.py,
docs/reliability.md): a flaky service's burst of failed calls, each retried and then going
through, logs nothing; calls failing for 30 s or more log one `service_unreachable` and,
when a call goes through, one `service_reachable_again`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import structlog

from runner.engine._pacing import DECLARE_OUTAGE_AFTER_S, Backoff, Outage, retrying
from runner.errors import RetryableError

OUTAGE_EVENTS = ("service_unreachable", "service_reachable_again")


class ManualClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.now_s += seconds


def failing(
    times: int, clock: ManualClock, step_s: float
) -> Callable[[], Coroutine[Any, Any, str]]:
    """A call that fails `times` times (a refused connection, `step_s` seconds each), then
    goes through."""
    left = [times]

    async def call() -> str:
        clock.now_s += step_s
        if left[0]:
            left[0] -= 1
            raise RetryableError("POST /v2/consumer/workflows: ConnectError")
        return "ok"

    return call


async def run_calls(calls: int, fails: int, step_s: float) -> tuple[list[str], Outage]:
    clock = ManualClock()
    outage = Outage(3600, clock=clock, now=lambda: datetime(2026, 12, 4, 2, 13))
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(calls):
            result = await retrying(
                failing(fails, clock, step_s),
                backoff=backoff,
                what="submit",
                outage=outage,
                sleep=clock.sleep,
            )
            assert result == "ok"
    return [e["event"] for e in logs if e["event"] in OUTAGE_EVENTS], outage


async def test_a_burst_of_transient_failures_declares_no_outage() -> None:
    """Fifty calls under a flaky service, each failing three times before it goes through
    (a few seconds each): retries, but no outage event and nothing on the display."""
    events, outage = await run_calls(calls=50, fails=3, step_s=0.2)
    assert events == []
    assert outage.describe() is None


async def test_a_sustained_outage_logs_exactly_one_pair() -> None:
    """One call failing for minutes (every try refused) and then going through: one
    `service_unreachable`, one `service_reachable_again`."""
    events, outage = await run_calls(calls=1, fails=60, step_s=1.0)
    assert events == list(OUTAGE_EVENTS)
    assert outage.describe() is None


def test_the_display_says_unreachable_only_once_calls_failed_long_enough() -> None:
    clock = ManualClock()
    outage = Outage(3600, clock=clock, now=lambda: datetime(2026, 12, 4, 2, 13))
    with structlog.testing.capture_logs() as logs:
        outage.failed(RetryableError("GET x: ConnectError"))
        clock.now_s += DECLARE_OUTAGE_AFTER_S - 1
        outage.failed(RetryableError("GET x: 503", status=503))
        assert outage.describe() is None
        assert logs == []
        clock.now_s += 1
        assert outage.describe() == "service unreachable since 02:13, retrying"
        outage.failed(RetryableError("GET x: ConnectError"))
        outage.failed(RetryableError("GET x: ConnectError"))
        assert [e["event"] for e in logs] == ["service_unreachable"]
        outage.succeeded()
        outage.succeeded()
    assert [e["event"] for e in logs] == list(OUTAGE_EVENTS)
