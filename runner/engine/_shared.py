"""What the engine's tasks share: the run's stats, and change notices to wait on.

Tasks wait for one another without polling. Every task that changes what another may be
waiting for (an attempt recorded running or finished, a slot released, an image written, a
stop asked for) calls `Changes.notify()`; a task waiting for a condition takes the current
notice *before* it looks, so a change made while it looks (across an `await`) is not missed:

```
while True:
    changed = changes.notice()
    if await condition():
        break
    await changed.wait()
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio


class Changes:
    """A broadcast: every waiter of the current notice wakes at the next change."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notice(self) -> anyio.Event:
        """The event the next change sets; take it before looking at what it guards."""
        return self._event

    def notify(self) -> None:
        """Wake every task waiting on a notice; later waiters get a fresh one."""
        self._event.set()
        self._event = anyio.Event()


@dataclass
class RunStats:
    """What this run did, for the display and the summary (the store has the full record)."""

    submitted: int = 0  # acknowledged by the service (a workflow id), this run
    resubmitted: int = 0  # a previous run's intents, sent again and acknowledged
    finished: dict[str, int] = field(default_factory=dict)
    images_downloaded: int = 0
    images_lost: int = 0
    retries: int = 0
    cap_reached: bool = False
    stop_reason: str | None = None

    def count_finished(self, outcome: str) -> None:
        self.finished[outcome] = self.finished.get(outcome, 0) + 1
