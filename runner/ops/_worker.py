"""`zbatch worker NAME --store URL --out OUT`: one of several workers draining one batch.

The batch was planned by `zbatch run` (or `zbatch plan`) into a PostgreSQL database; each
worker joins it (its `workers` row and lease), claims attempts with their reservations in
one transaction (within the batch's in-flight total across all workers and its cap),
submits and polls them, downloads their images into its own OUT, heartbeats, and takes
over the attempts of workers whose lease ran out (docs/design/scale-out.md, sections 3-4).
It ends when nothing in the batch is planned or in flight, on a stop, or when it was
declared dead itself (`LeaseLost` / `Fenced`: another worker took its attempts over; exit
code 8). The batch's limits and captions are the ones its manifest set (the run settings
`zbatch run` saved); the dataset (`metadata.jsonl`) is not written by a worker: its OUT
holds only the images it fetched.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import structlog

from runner.api import Client
from runner.disk import OutFolder
from runner.engine import Engine, EngineConfig, RunStats
from runner.errors import NotABatch, StoreError
from runner.ops._run import Target, with_client
from runner.store import PostgresStore, Store, Worker, is_store_url, open_store, redact

log = structlog.get_logger(__name__)
LEASE_S = 30.0  # a worker silent this long (by the database's clock) is declared dead


async def _open(location: str | Path) -> Store:
    """The batch, opened as a worker opens it: on PostgreSQL its lock shared with the
    other workers'; a database file has one runner, so one worker."""
    if is_store_url(location):
        return await PostgresStore.open_url(str(location), worker=True)
    return await open_store(Path(location))


def _shown(location: str | Path) -> str:
    return redact(str(location)) if is_store_url(location) else str(location)


async def _leave(worker: Worker) -> None:
    """Give back what `worker` did not finish (a stop, an error), unless it is dead."""
    if worker.fence is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await worker.leave()
        except StoreError as exc:  # the database is gone: its lease runs out instead
            log.warning("worker_leave_failed", error=str(exc))


async def work_batch(
    name: str,
    location: str | Path,
    client: Client,
    *,
    out: Path,
    runtime_scale: float = 1.0,
    lease_s: float = LEASE_S,
    handle_signals: bool = False,
    tuning: Mapping[str, Any] | None = None,
) -> RunStats:
    """Join the batch `name` at `location` and work until it is drained (see above)."""
    async with await _open(location) as store:
        info = await store.batch_info()
        if info.name != name:
            raise NotABatch(f"{_shown(location)} holds the batch {info.name!r}, not {name!r}")
        settings = await store.run_settings()
        config = EngineConfig(tag=info.tag, out_dir=out, runtime_scale=runtime_scale)
        if settings is not None:
            config = dataclasses.replace(
                config, in_flight=settings.in_flight, submit_per_s=settings.submit_per_s,
                downloads=settings.downloads,
            )  # fmt: skip
        config = dataclasses.replace(config, **dict(tuning or {}))
        OutFolder(out).images.mkdir(parents=True, exist_ok=True)
        worker = Worker(store, f"{name}@{socket.gethostname()}:{os.getpid()}", lease_s=lease_s)
        await worker.join(str(out))
        me = worker.id
        log.info("worker_joined", batch=name, worker=me, lease_s=lease_s)
        engine = Engine(store, client, config, worker)
        try:
            stats = await engine.run(handle_signals=handle_signals)
        finally:  # declared dead (`Fenced`): a no-op, its attempts are already others'
            await _leave(worker)
        log.info("worker_done", batch=name, worker=me, submitted=stats.submitted)
        return stats


def execute_worker(
    name: str, location: str, *, out: Path, target: Target, lease_s: float = LEASE_S
) -> RunStats:
    """`zbatch worker` against `target`. Blocking: it owns the event loop (`with_client`)."""

    async def work(client: Client, runtime_scale: float) -> RunStats:
        return await work_batch(
            name, location, client, out=out, runtime_scale=runtime_scale, lease_s=lease_s,
            handle_signals=True,
        )  # fmt: skip

    return with_client(work, target)
