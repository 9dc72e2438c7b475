"""Two workers drain one batch in PostgreSQL on the emulator (docs/design/scale-out.md, 3-4):
every externalId makes one workflow, the in-flight total across both never exceeds the
batch's limit (counted at the emulator), the cap holds, every image is fetched once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.api._client import Client
from runner.emulator import EmulatorConfig, EmulatorTransport, make_app
from runner.engine import Engine, EngineConfig
from runner.identity import batch_tag
from runner.manifest._load import parse_manifest
from runner.ops._run import RunOverrides, plan_batch
from runner.ops._worker import work_batch
from runner.store import Fenced, PostgresStore, Worker
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
FAST: dict[str, Any] = {
    "poll_min_s": 0.001,
    "poll_max_s": 0.05,
    "backoff_base_s": 0.001,
    "backoff_cap_s": 0.01,
}


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


async def test_a_worker_declared_dead_is_fenced_and_another_takes_its_attempts_over(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Worker A holds its heartbeat (as a paused process would): once its lease has run
    out, its next record is refused (`Fenced`, exit 8) and it stops; worker B declares it
    dead and takes over what A left in flight: each intent resubmitted by its externalId
    makes no second workflow, and the batch ends with every cell done, every image once."""
    prompts = ", ".join(f'"a cabin number {i}"' for i in range(6))
    path = tmp_path / "drained.yaml"
    path.write_text(
        MANIFEST.format(out=tmp_path / "planned", prompts=prompts, in_flight=IN_FLIGHT),
        encoding="utf-8",
    )
    manifest = parse_manifest(path.read_text(), path=path)
    app = make_app(EmulatorConfig(time_scale=0.05, seed=7))
    emulator = app.state.emulator
    with pg_cluster.new_database() as url, anyio.fail_after(240):
        async with await PostgresStore.open_url(url) as store:
            await plan_batch(store, manifest, batch_tag("drained"), RunOverrides())
        async with Client(
            base_url="http://emulator", token="t", transport=EmulatorTransport(app)
        ) as client:
            async with await PostgresStore.open_url(url, worker=True) as store:
                a = Worker(store, "a", lease_s=1.0)
                a.heartbeat = anyio.sleep_forever  # type: ignore[method-assign,assignment]  # held
                await a.join()
                config = EngineConfig(
                    tag=batch_tag("drained"), out_dir=tmp_path / "a", in_flight=IN_FLIGHT,
                    runtime_scale=0.05, **FAST,
                )  # fmt: skip
                with pytest.raises(Fenced) as fenced:
                    await Engine(store, client, config, a).run()
                assert fenced.value.exit_code == 8
            a_id = a.fence.worker if a.fence else -1
            left = await _in_flight_of(url, a_id)
            assert left  # A stopped with attempts in flight
            stats = await work_batch("drained", url, client, out=tmp_path / "b", tuning=FAST)
        assert stats.resubmitted + stats.submitted > 0
        records = list(emulator.records.values())
        assert len(records) == 60
        assert len({r.external_id for r in records}) == 60  # one workflow per externalId
        taken = await _owned(url, left)  # what A left in flight: B's now, at a new epoch
        assert {(state, epoch) for _, state, epoch in taken} == {("succeeded", 2)}
        assert a_id not in {owner for owner, _, _ in taken}
        async with await PostgresStore.open_url(url, read_only=True) as store:
            assert (await store.counts()).get("succeeded") == 60
        dead = await _states(url)
        assert dead == ["dead", "left"]
        files = [
            f.name for out in ("a", "b") for f in (tmp_path / out / "images").rglob("*")
            if f.is_file()
        ]  # fmt: skip
        assert len(files) == len(set(files)) == 60


async def _in_flight_of(url: str, worker: int) -> list[int]:
    import psycopg

    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT id FROM attempts WHERE owner = %s AND state IN ('submitting', 'running')",
            (worker,),
        ).fetchall()
    return [int(r[0]) for r in rows]


async def _states(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as db:
        return [str(r[0]) for r in db.execute("SELECT state FROM workers ORDER BY id")]


async def _owned(url: str, ids: list[int]) -> list[tuple[int, str, int]]:
    import psycopg

    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT owner, state, owner_epoch FROM attempts WHERE id = ANY(%s)", (ids,)
        ).fetchall()
    return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]
