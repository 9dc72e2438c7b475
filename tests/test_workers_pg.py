"""Two workers drain one batch in PostgreSQL on the emulator (docs/design/scale-out.md, 3-4):
every externalId makes one workflow, the in-flight total across both never exceeds the
batch's limit (counted at the emulator), the cap holds, every image is fetched once."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runner.api._client import Client
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app
from runner.identity import batch_tag
from runner.manifest._load import parse_manifest
from runner.ops._run import RunOverrides, plan_batch
from runner.ops._worker import work_batch
from runner.store import PostgresStore
from tests.services import PostgresCluster

pytestmark = pytest.mark.postgresql

IN_FLIGHT = 4
MANIFEST = """
name: drained
out: {out}
budget: 100000
seed_base: 3
defaults: {{size: 64x64, quantity: 1}}
grid:
  model: [turbo]
  prompt: [{prompts}]
  seed: {{count: 10}}
limits: {{in_flight: {in_flight}, submit_per_s: 1000, downloads: 2}}
"""
FAST = {"poll_min_s": 0.001, "poll_max_s": 0.05, "backoff_base_s": 0.001, "backoff_cap_s": 0.01}


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most of the [start, end) intervals open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


async def test_two_workers_drain_one_batch_once(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    prompts = ", ".join(f'"a lighthouse number {i}"' for i in range(20))
    path = tmp_path / "drained.yaml"
    path.write_text(
        MANIFEST.format(out=tmp_path / "planned", prompts=prompts, in_flight=IN_FLIGHT),
        encoding="utf-8",
    )
    manifest = parse_manifest(path.read_text(), path=path)
    app = make_app(EmulatorConfig(time_scale=0.02, seed=5))
    emulator = app.state.emulator
    with pg_cluster.new_database() as url, anyio.fail_after(240):
        async with await PostgresStore.open_url(url) as store:
            planned, _ = await plan_batch(store, manifest, batch_tag("drained"), RunOverrides())
        assert planned.added == 200
        outs = [tmp_path / "a", tmp_path / "b"]
        async with Client(
            base_url="http://emulator", token="t", transport=EmulatorTransport(app)
        ) as client:

            async def work(out: Path) -> None:
                await work_batch("drained", url, client, out=out, tuning=FAST, lease_s=3.0)

            async with anyio.create_task_group() as group:
                for out in outs:
                    group.start_soon(work, out)
        records = list(emulator.records.values())
        assert len(records) == 200
        assert len({r.external_id for r in records}) == 200  # one workflow per externalId
        spans = [(r.created_s, r.terminal_s) for r in records]
        assert most_at_once(spans) <= IN_FLIGHT
        async with await PostgresStore.open_url(url, read_only=True) as store:
            counts = await store.counts()
            budget = await store.budget()
            owners = {a for a in await _owners(url)}
        assert counts.get("succeeded") == 200
        assert budget.committed_buzz <= budget.cap_buzz
        assert len(owners) == 2  # both workers did some of it
        files = [f.name for out in outs for f in (out / "images").rglob("*") if f.is_file()]
        assert len(files) == 200
        assert len(set(files)) == 200  # every image once, in one worker's OUT


async def _owners(url: str) -> set[int]:
    import psycopg

    with psycopg.connect(url) as db:
        return {int(r[0]) for r in db.execute("SELECT DISTINCT owner FROM attempts").fetchall()}
