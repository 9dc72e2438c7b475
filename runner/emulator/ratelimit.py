"""Per-token rate limits: one token bucket per (account, kind) refilled on the emulator clock."""

from __future__ import annotations

import math
from dataclasses import dataclass

from runner.emulator.clock import Clock
from runner.emulator.config import RateLimit


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """Token buckets keyed by (account, kind): `acquire` spends a token or says how long to wait."""

    def __init__(self, clock: Clock, limits: dict[str, RateLimit | None]) -> None:
        self._clock = clock
        self._limits = limits
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.throttled = 0

    def acquire(self, account: str, kind: str) -> int | None:
        """Take one token; None when allowed, else the Retry-After in whole seconds (>= 1)."""
        limit = self._limits.get(kind)
        if limit is None:
            return None
        now_s = self._clock.now()
        bucket = self._buckets.setdefault((account, kind), _Bucket(float(limit.burst), now_s))
        elapsed_s = max(0.0, now_s - bucket.updated_s)
        bucket.tokens = min(float(limit.burst), bucket.tokens + elapsed_s * limit.per_s)
        bucket.updated_s = now_s
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        self.throttled += 1
        if limit.per_s <= 0:
            return 3600
        return max(1, math.ceil((1.0 - bucket.tokens) / limit.per_s))
