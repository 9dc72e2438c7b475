"""What fences a worker's transitions: the attempts it owns, and the errors of losing them.

A worker (docs/design/scale-out.md, section 3) owns the attempts it claimed, each at the
epoch its claim gave it. While a store carries a `Fence`, every transition of an attempt is
guarded by `owner = :me AND owner_epoch = :epoch` besides its state (`_transitions.move`);
one that matches nothing because another worker owns the attempt now is `Fenced`: not a
bug, the attempt was taken over, and the worker forgets it (the fence drops it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from runner.errors import StoreError


class Fenced(StoreError):
    """A transition of an attempt this worker no longer owns (another worker took it over
    after this one's lease ran out): nothing was changed."""

    exit_code: ClassVar[int] = 8

    def __init__(self, message: str, *, attempt_id: int | None = None) -> None:
        super().__init__(message)
        self.attempt_id = attempt_id


class LeaseLost(Fenced):
    """This worker's lease ran out and another worker declared it dead: it stops acting at
    once (sends nothing, records nothing) and exits."""


@dataclass
class Fence:
    """A worker's identity in the batch (its `workers` row) and the epoch of each attempt
    it owns. Touched by the writer's thread (a fenced transition forgets its attempt) and
    the event loop's: single dict operations, atomic under the GIL."""

    worker: int
    epochs: dict[int, int] = field(default_factory=dict)

    def epoch(self, attempt_id: int) -> int:
        """The epoch this worker owns `attempt_id` at; -1 (matches no row) when it owns it
        not."""
        return self.epochs.get(attempt_id, -1)

    def forget(self, attempt_id: int) -> None:
        self.epochs.pop(attempt_id, None)
