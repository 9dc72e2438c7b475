"""Workers draining one batch (docs/design/scale-out.md, sections 3-4): join, heartbeat,
sweep, claim-and-reserve in one transaction within the in-flight total and the cap, and
every transition of an owned attempt fenced by owner and epoch. On both backends
(`store_backend`); two workers at once only on PostgreSQL (SQLite has one runner)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import psycopg
import pytest

from runner.errors import BatchInUse
from runner.store import AttemptState, Fenced, LeaseLost, PostgresStore, Store, Worker
from tests.cells import turbo_cell
from tests.services import PostgresCluster, StoreBackend

PRICE = 8


async def open_worker_store(backend: StoreBackend) -> Store:
    """The batch, opened as a worker opens it (on PostgreSQL: the batch's lock shared)."""
    if backend.name == "sqlite":
        return await backend.open()
    return await PostgresStore.open_url(str(backend.location), worker=True)


@pytest.fixture
async def store(store_backend: StoreBackend) -> AsyncIterator[Store]:
    s = await open_worker_store(store_backend)
    await s.init_batch(name="t", tag="zbatch:t", cap_buzz=10 * PRICE)
    await s.plan_rows([turbo_cell(i, estimate_buzz=PRICE) for i in range(20)], max_attempts=1)
    try:
        yield s
    finally:
        await s.close()


async def test_a_claim_reserves_within_the_in_flight_total_and_the_cap(
    store: Store, store_backend: StoreBackend
) -> None:
    with anyio.fail_after(20):
        worker = Worker(store, "w1")
        me = await worker.join()
        first = await worker.claim(in_flight=4, limit=10)
        assert [a.state for a, _ in first.planned] == [AttemptState.SUBMITTING] * 4
        assert first.orphans == []
        assert (await worker.claim(in_flight=4, limit=10)).planned == []  # 4 in flight
        running = first.planned[0][0]
        await store.mark_running(running.id, "wf-1", PRICE)
        await store.mark_finished(running.id, AttemptState.SUCCEEDED, charged_buzz=PRICE)
        assert len((await worker.claim(in_flight=4, limit=10)).planned) == 1
        # the cap (10 cells' worth) stops claims before the in-flight total does
        more = await worker.claim(in_flight=100, limit=100)
        assert len(more.planned) == 10 - 5
        budget = await store.budget()
        assert budget.committed_buzz == 10 * PRICE
        owners = store_backend.rows(
            "SELECT count(*) FROM attempts WHERE owner = ? AND owner_epoch = 1", me
        )
        assert owners == [(10,)]


async def test_a_transition_of_an_attempt_the_worker_does_not_own_is_fenced(
    store: Store,
) -> None:
    with anyio.fail_after(20):
        worker = Worker(store, "w1")
        await worker.join()
        claimed = (await worker.claim(in_flight=2, limit=2)).planned
        mine = claimed[0][0]
        other = (await store.next_planned(1))[0]
        with pytest.raises(Fenced):
            await store.reserve(other.id, PRICE)  # a planned row is claimed, not reserved
        await store.mark_running(mine.id, "wf-1", PRICE)
        assert (await store.attempt(mine.id)).state is AttemptState.RUNNING
        await worker.leave()
        # a left worker's in-flight attempts are orphans, the next claim takes them over
        again = Worker(store, "w2")
        await again.join()
        orphans = (await again.claim(in_flight=2, limit=2)).orphans
        assert sorted((a.id, epoch) for a, epoch in orphans) == sorted(
            (a.id, 2) for a, _ in claimed
        )


async def test_a_worker_whose_lease_ran_out_is_fenced_and_its_attempts_taken_over(
    store_backend: StoreBackend, store: Store
) -> None:
    with anyio.fail_after(30):
        a = Worker(store, "a", lease_s=0.2)
        await a.join()
        taken = [attempt for attempt, _ in (await a.claim(in_flight=3, limit=3)).planned]
        await store.mark_running(taken[0].id, "wf-0", PRICE)
        # A pauses (holds its heartbeat); once its lease has run out it claims nothing
        for _ in range(400):  # polled: the lease ends by the database's clock
            if (await a.live())[0][2] < 0:
                break
            await anyio.sleep(0.05)
        with pytest.raises(LeaseLost):
            await a.claim(in_flight=3, limit=3)
        b_store = (
            store if store_backend.name == "sqlite" else await open_worker_store(store_backend)
        )
        try:
            b = Worker(b_store, "b")
            await b.join()
            assert await b.sweep() == [a.id]
            orphans = (await b.claim(in_flight=3, limit=3)).orphans
            assert {x.id: x.state for x, _ in orphans} == {
                taken[0].id: AttemptState.RUNNING,
                taken[1].id: AttemptState.SUBMITTING,
                taken[2].id: AttemptState.SUBMITTING,
            }
            assert {epoch for _, epoch in orphans} == {2}
            if store_backend.name == "postgresql":
                # A resumes: each of its transitions is fenced, its heartbeat says it is dead
                with pytest.raises(Fenced):
                    await store.mark_running(taken[1].id, "wf-a", PRICE)
                assert not a.owns(taken[1].id)
                with pytest.raises(Fenced):
                    await store.mark_finished(
                        taken[0].id, AttemptState.SUCCEEDED, charged_buzz=PRICE
                    )
                with pytest.raises(LeaseLost):
                    await a.heartbeat()
                # B finishes what it took over
                await b_store.mark_running(taken[1].id, "wf-1", PRICE)
                await b_store.mark_finished(taken[0].id, AttemptState.SUCCEEDED, charged_buzz=PRICE)
                assert (await b_store.attempt(taken[1].id)).workflow_id == "wf-1"
        finally:
            if b_store is not store:
                await b_store.close()


@pytest.mark.postgresql
async def test_two_workers_drain_one_batch_within_the_in_flight_total_and_the_cap(
    pg_cluster: PostgresCluster,
) -> None:
    """Two workers (two sessions) claim, run and finish at once: every attempt claimed by
    one worker only, at most `in_flight` submitting or running at any moment (counted by
    the test's own session after every claim), the cap held, nothing left planned."""
    cells, in_flight, cap = 120, 5, 100 * PRICE
    with pg_cluster.new_database() as url, anyio.fail_after(120):
        first = await PostgresStore.open_url(url, worker=True)
        await first.init_batch(name="t", tag="zbatch:t", cap_buzz=cap)
        await first.plan_rows(
            [turbo_cell(i, estimate_buzz=PRICE) for i in range(cells)], max_attempts=1
        )
        second = await PostgresStore.open_url(url, worker=True)
        seen: dict[int, str] = {}
        peaks: list[int] = []

        async def drain(store: Store, name: str) -> None:
            worker = Worker(store, name)
            await worker.join()
            while claimed := (await worker.claim(in_flight=in_flight, limit=3)).planned:
                peaks.append(in_flight_now(url))
                for attempt, _ in claimed:
                    assert seen.setdefault(attempt.id, name) == name
                    await store.mark_running(attempt.id, f"wf-{attempt.id}", PRICE)
                    await store.mark_finished(
                        attempt.id, AttemptState.SUCCEEDED, charged_buzz=PRICE
                    )
            await worker.leave()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(drain, first, "a")
                group.start_soon(drain, second, "b")
            assert len(seen) == 100  # the cap: 100 cells' worth
            assert set(seen.values()) == {"a", "b"}
            assert max(peaks) <= in_flight
            budget = await first.budget()
            assert budget.committed_buzz == cap
            assert (await first.counts())["planned"] == cells - 100
        finally:
            await first.close()
            await second.close()


async def test_a_runner_that_does_not_claim_is_refused_beside_a_worker(
    pg_cluster: PostgresCluster,
) -> None:
    with pg_cluster.new_database() as url, anyio.fail_after(30):
        worker = await PostgresStore.open_url(url, worker=True)
        other = await PostgresStore.open_url(url, worker=True)  # workers share the batch
        try:
            with pytest.raises(BatchInUse):
                await PostgresStore.open_url(url)
        finally:
            await worker.close()
            await other.close()
        runner = await PostgresStore.open_url(url)
        try:
            with pytest.raises(BatchInUse):
                await PostgresStore.open_url(url, worker=True)
        finally:
            await runner.close()


def in_flight_now(url: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(
            "SELECT count(*) FROM attempts WHERE state IN ('submitting', 'running')"
        ).fetchone()
    assert row is not None
    return int(row[0])
