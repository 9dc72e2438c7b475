"""`Worker`: one of several processes draining the same batch (docs/design/scale-out.md, 3).

A worker joins the batch (its `workers` row and lease), heartbeats every `lease / 3` (a
renewal that finds the worker no longer live raises `LeaseLost`: it was declared dead and
its attempts taken over), sweeps the workers whose lease ran out, and claims attempts in
one transaction with their reservations (`_claims.claim`). While it is joined, its store's
transitions are fenced (`_fence.Fence`): each of an attempt another worker took over raises
`Fenced` and forgets it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from runner.store._claims import Claimed, claim, heartbeat, join, leave, live_workers, sweep
from runner.store._fence import Fence, LeaseLost
from runner.store._store import Store


class Worker:
    """A worker of the batch in `store` (its own store: one session per worker)."""

    def __init__(self, store: Store, name: str, *, lease_s: float = 30.0) -> None:
        if lease_s <= 0:
            raise ValueError("a worker's lease is a positive number of seconds")
        self.store = store
        self.name = name
        self.lease_s = lease_s
        self.fence: Fence | None = None

    @property
    def id(self) -> int:
        if self.fence is None:
            raise LeaseLost(f"worker {self.name!r} has not joined the batch")
        return self.fence.worker

    @property
    def heartbeat_s(self) -> float:
        """How often it renews its lease: a third of it."""
        return self.lease_s / 3

    async def join(self, out: str | None = None) -> int:
        """Insert this worker's row with its lease; from now on its transitions are fenced."""
        worker = await self.store._tx(
            join, self.name, socket.gethostname(), os.getpid(), out, self.lease_s
        )
        self.fence = Fence(worker)
        self.store.fence = self.fence
        return worker

    async def heartbeat(self) -> list[int]:
        """Renew the lease (`LeaseLost` when this worker was declared dead), then sweep:
        the workers this sweep declared dead."""
        await self.store._tx(heartbeat, self.id, self.lease_s)
        return await self.store._tx(sweep)

    async def sweep(self) -> list[int]:
        """Declare dead the workers whose lease ran out; their in-flight attempts orphans."""
        return await self.store._tx(sweep)

    async def claim(
        self, in_flight: int, limit: int, priced: Sequence[tuple[int, int]] | None = None
    ) -> Claimed:
        """Orphans to take over and up to `limit` planned attempts reserved (of `priced`,
        (attempt id, price), when given), within the batch's in-flight total `in_flight`
        and its cap; each now this worker's."""
        fence = self.fence
        if fence is None:
            raise LeaseLost(f"worker {self.name!r} has not joined the batch")
        claimed = await self.store._tx(claim, fence.worker, in_flight, limit, priced)
        for attempt, epoch in (*claimed.planned, *claimed.orphans):
            fence.epochs[attempt.id] = epoch
        return claimed

    def owns(self, attempt_id: int) -> bool:
        return self.fence is not None and attempt_id in self.fence.epochs

    async def leave(self) -> None:
        """Stop: the row `left`, the in-flight attempts orphans for the other workers."""
        if self.fence is not None:
            await self.store._tx(leave, self.fence.worker)
            self.store.fence = None
            self.fence = None

    async def live(self) -> list[tuple[int, str, float]]:
        """(id, name, seconds left of its lease) of each live worker."""
        return await self.store._read(live_workers)
