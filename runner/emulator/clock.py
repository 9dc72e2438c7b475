"""Time for the emulator: the Clock protocol, the real monotonic clock and a manual test clock.

Every status, expiry, refill and long-poll in the emulator is computed from `Clock.now()`
(seconds since the clock started). JSON timestamps are that offset plus a fixed epoch, so a
ManualClock gives byte-identical responses run after run.
"""

from __future__ import annotations

import heapq
import itertools
import time
from datetime import UTC, datetime
from typing import Protocol

import anyio

# 2026-01-01T00:00:00Z: the wall-clock instant that simulated time 0 maps to by default.
DEFAULT_EPOCH_UNIX_S = 1_767_225_600.0


class Clock(Protocol):
    """A source of simulated seconds and a way to wait for them."""

    def now(self) -> float:
        """Seconds since the clock started (never goes backwards)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock."""
        ...


class MonotonicClock:
    """Real time: `time.monotonic()` since construction, plus `start_s` (where a restored
    emulator's clock stood when it was saved); `anyio.sleep` to wait."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._start_s = time.monotonic() - start_s

    def now(self) -> float:
        return time.monotonic() - self._start_s

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class ManualClock:
    """Test time: stands still until `advance()`; sleepers wake when their deadline passes.

    Single event loop only: `advance` must run on the loop the sleepers wait on.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (>= 0) and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError(f"ManualClock.advance: {seconds} s is negative (allowed: >= 0)")
        self._now_s += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now_s:
            _, _, event = heapq.heappop(self._sleepers)
            event.set()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now_s + seconds, next(self._order), event))
        await event.wait()

    def statistics(self) -> dict[str, float | int]:
        """The current time and how many sleepers wait on it."""
        return {"now_s": self._now_s, "sleepers": len(self._sleepers)}


def iso_utc(unix_s: float) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, as the service writes timestamps."""
    stamp = datetime.fromtimestamp(unix_s, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """An ISO-8601 date-time (with `Z` or an offset; naive means UTC) as unix seconds."""
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()
