"""Shared pieces of the operations tests: a manifest, an in-process client, the record."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette

from runner.api._client import Client
from runner.emulator import EmulatorTransport, ManualClock
from runner.emulator.ledger import account_id
from runner.emulator.service import Emulator
from runner.manifest._load import Manifest, parse_manifest

FAST = {"poll_min_s": 0.001, "backoff_base_s": 0.001, "backoff_cap_s": 0.01}
TOKEN = "ops-token"

MANIFEST = """
name: ops
out: out
budget: {budget}
seed_base: 11
defaults: {{size: {size}, quantity: 2, model: {model}}}
grid:
  prompt: ["a fox in the snow", "a red lighthouse", "a bowl of ramen"]
  seed: {{count: {seeds}}}
retries: {{attempts: {attempts}}}
limits: {limits}
captions: {captions}
"""
LIMITS = "{in_flight: 8, submit_per_s: 1000, downloads: 4}"


def manifest(
    tmp_path: Path,
    *,
    budget: int = 1000,
    seeds: int = 2,
    attempts: int = 1,
    size: str = "64x64",
    model: str = "turbo",
    limits: str = LIMITS,
    captions: str = "none",
) -> Manifest:
    path = tmp_path / "m.yaml"
    text = MANIFEST.format(
        budget=budget,
        seeds=seeds,
        attempts=attempts,
        size=size,
        model=model,
        limits=limits,
        captions=captions,
    )
    path.write_text(text)
    return parse_manifest(path.read_text(), path=path)


@asynccontextmanager
async def client_for(app: Starlette) -> AsyncIterator[Client]:
    async with Client(
        base_url="http://emulator", token=TOKEN, transport=EmulatorTransport(app)
    ) as client:
        yield client


def emulator_of(app: Starlette) -> Emulator:
    emulator: Emulator = app.state.emulator
    return emulator


def rows(m: Manifest, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect((m.out / "batch.sqlite").resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return list(db.execute(sql, params).fetchall())
    finally:
        db.close()


def lose_an_image(m: Manifest, app: Starlette) -> str:
    """Delete the first recorded image's file and its workflow on the service (its blobs go
    with it), so a repair can only record it lost. Returns the image's path in OUT."""
    path, workflow = rows(
        m,
        "SELECT i.path, a.workflow_id FROM images i JOIN attempts a ON a.id = i.attempt_id"
        " ORDER BY i.path LIMIT 1",
    )[0]
    (m.out / path).unlink()
    emulator_of(app).delete(account_id(TOKEN), workflow)
    return str(path)


def running(m: Manifest) -> int:
    """Attempts recorded running (0 before the run made its database)."""
    try:
        return len(rows(m, "SELECT 1 FROM attempts WHERE state = 'running'"))
    except sqlite3.OperationalError:  # not created, or not migrated yet
        return 0


def cell_states(m: Manifest) -> dict[str, str]:
    """Each cell's latest attempt state."""
    found = rows(
        m,
        "SELECT a.cell_key, a.state FROM attempts a WHERE a.attempt ="
        " (SELECT MAX(b.attempt) FROM attempts b WHERE b.cell_key = a.cell_key)",
    )
    return {key: state for key, state in found}


def images_on_disk_match(m: Manifest) -> int:
    """Every current downloaded image is on disk with its sha256; returns how many."""
    found = rows(m, "SELECT path, sha256 FROM images WHERE state = 'downloaded'")
    for path, sha in found:
        assert hashlib.sha256((m.out / path).read_bytes()).hexdigest() == sha, path
    return len({path for path, _ in found})


def ids_by_external_id(app: Starlette) -> dict[str, list[str]]:
    state = emulator_of(app).state()
    return {key: entry["ids"] for key, entry in state["workflows"].items()}


def assert_one_workflow_per_external_id(app: Starlette) -> None:
    for key, ids in ids_by_external_id(app).items():
        assert len(ids) == 1, f"{key} made {len(ids)} workflows"


def delete_record(m: Manifest) -> None:
    """What losing the disk (or a fresh machine) does to the record."""
    for name in ("batch.sqlite", "batch.sqlite-wal", "batch.sqlite-shm", "batch.sqlite.lock"):
        (m.out / name).unlink(missing_ok=True)


async def tick(clock: ManualClock, step_s: float = 0.5) -> None:
    """Move the emulator's clock whenever every other task is waiting (until cancelled)."""
    while True:
        await anyio.wait_all_tasks_blocked()
        clock.advance(step_s)
        await anyio.lowlevel.checkpoint()
