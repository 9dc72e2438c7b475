"""Seeded, order-independent randomness and the fault decisions drawn from it.

A draw is `hash(seed, purpose, subject, n)`: the same subject asked about the same purpose
for the n-th time always gets the same answer, whatever other requests ran in between.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

from runner.emulator.config import FaultProfile

DEFAULT_STATUSES: dict[str, tuple[int, ...]] = {"submit_5xx_after": (502,)}
GENERIC_STATUSES = (500, 502, 503)
# Each fault that fires is one INFO line here, with its kind (`fault`) and subject: `zbatch
# emulator` prints it among uvicorn's lines; an embedded emulator's go to the run's
# OUT/log.jsonl (runner.cli's api_target), never to the user's terminal.
log = logging.getLogger("runner.emulator")


def derive_bytes(*parts: object) -> bytes:
    """32 bytes that depend only on `parts`."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).digest()


def derive_int(*parts: object) -> int:
    """A 64-bit integer that depends only on `parts`."""
    return int.from_bytes(derive_bytes(*parts)[:8], "big")


def derive_unit(*parts: object) -> float:
    """A float in [0, 1) that depends only on `parts`."""
    return derive_int(*parts) / 2.0**64


class FaultInjector:
    """Decides, per fault kind and subject, whether a fault fires; remembers what fired."""

    def __init__(self, profile: FaultProfile, seed: int) -> None:
        self.profile = profile
        self._seed = seed
        self._seen: Counter[tuple[str, str]] = Counter()
        self.fired: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []

    def fires(self, kind: str, subject: str) -> bool:
        """Draw for the next time `subject` meets fault `kind`; True when it fires."""
        rule = self.profile.rule(kind)
        n = self._seen[(kind, subject)]
        self._seen[(kind, subject)] += 1
        if rule.p <= 0.0:
            return False
        if rule.times is not None and self.fired[kind] >= rule.times:
            return False
        if derive_unit(self._seed, "fault", kind, subject, n) >= rule.p:
            return False
        self.fired[kind] += 1
        self.events.append({"kind": kind, "subject": subject, "n": n})
        log.info(
            "emulated fault %s on %s", kind, subject, extra={"fault": kind, "subject": subject}
        )
        return True

    def status_for(self, kind: str, subject: str) -> int:
        """The 5xx status a firing fault answers with (seeded choice among the rule's statuses)."""
        rule = self.profile.rule(kind)
        statuses: tuple[int, ...] = rule.statuses or DEFAULT_STATUSES.get(kind, GENERIC_STATUSES)
        n = self._seen[(kind, subject)]
        return statuses[derive_int(self._seed, "status", kind, subject, n) % len(statuses)]
