"""The store: guarded transitions, the budget ledger, retries, images, the lock, durability."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from runner.errors import StoreError
from runner.identity import PlanRow, external_id
from runner.store._rows import AttemptState, ImageOutcome
from runner.store._store import Store
from tests.cells import turbo_cell
from tests.services import StoreBackend


def cell(n: int, *, estimate: int = 8, model: str = "turbo") -> PlanRow:
    return turbo_cell(n, estimate_buzz=estimate, model=model)


@pytest.fixture
async def store(store_backend: StoreBackend) -> AsyncIterator[Store]:
    s = await store_backend.open()
    await s.init_batch(name="t", tag="zbatch:t", cap_buzz=100)
    try:
        yield s
    finally:
        await s.close()


async def test_plan_is_idempotent_and_reports_removed_cells(store: Store) -> None:
    with anyio.fail_after(10):
        first = await store.plan_rows([cell(i) for i in range(5)], max_attempts=3)
        again = await store.plan_rows([cell(i) for i in range(5)], max_attempts=3)
        edited = await store.plan_rows([cell(i) for i in range(2, 7)], max_attempts=3)
        assert (first.added, first.kept, first.removed) == (5, 0, 0)
        assert (again.added, again.kept, again.removed) == (0, 5, 0)
        assert (edited.added, edited.kept, edited.removed) == (2, 3, 2)
        planned = await store.next_planned(100)
        assert [a.cell_key for a in planned] == [cell(i).key for i in range(2, 7)]
        assert (await store.counts())["planned"] == 7  # removed cells keep their record


async def test_reserve_holds_the_cap(store: Store) -> None:
    with anyio.fail_after(10):
        await store.plan_rows([cell(i, estimate=30) for i in range(5)], max_attempts=1)
        attempts = await store.next_planned(10)
        granted = [await store.reserve(a.id, a.estimate_buzz) for a in attempts]
        assert granted == [True, True, True, False, False]
        budget = await store.budget()
        assert (budget.committed_buzz, budget.reserved_buzz, budget.charged_buzz) == (90, 90, 0)
        assert await store.unsubmitted() == (2, 60)


async def test_running_then_refunded_failure_plans_a_new_attempt(store: Store) -> None:
    with anyio.fail_after(10):
        await store.plan_rows([cell(1, estimate=10)], max_attempts=2)
        (a,) = await store.next_planned(10)
        assert a.external_id == external_id(a.cell_key, 1)
        assert await store.reserve(a.id, 10)
        await store.mark_running(a.id, "wf-1", charged_buzz=8)
        assert (await store.budget()).committed_buzz == 8
        retry_id = await store.mark_finished(a.id, AttemptState.FAILED, charged_buzz=0)
        assert retry_id is not None
        retry = await store.attempt(retry_id)
        assert (retry.attempt, retry.state) == (2, AttemptState.PLANNED)
        assert retry.external_id != a.external_id
        assert (await store.budget()).committed_buzz == 0
        assert await store.reserve(retry.id, 10)
        await store.mark_running(retry.id, "wf-2", charged_buzz=8)
        last = await store.mark_finished(retry.id, AttemptState.EXPIRED, charged_buzz=0)
        assert last is None  # attempts exhausted


async def test_blocked_and_rejected_are_never_retried(store: Store) -> None:
    with anyio.fail_after(10):
        await store.plan_rows([cell(1), cell(2)], max_attempts=5)
        a, b = await store.next_planned(10)
        for x in (a, b):
            assert await store.reserve(x.id, 8)
        await store.mark_rejected(a.id, "steps[0].input.width: divisible by 16")
        await store.mark_running(b.id, "wf", charged_buzz=8)
        assert await store.mark_finished(b.id, AttemptState.BLOCKED, charged_buzz=0) is None
        counts = await store.counts()
        assert (counts["rejected"], counts["blocked"]) == (1, 1)
        assert "planned" not in counts
        assert (await store.budget()).committed_buzz == 0


async def test_succeeded_images_become_pending_then_downloaded_or_lost(store: Store) -> None:
    with anyio.fail_after(10):
        await store.plan_rows([cell(1)], max_attempts=1)
        (a,) = await store.next_planned(1)
        assert await store.reserve(a.id, 8)
        await store.mark_running(a.id, "wf", charged_buzz=8)
        images = [
            ImageOutcome(0, "b0", deliverable=True),
            ImageOutcome(1, "b1", deliverable=False, reason="blocked"),
        ]
        await store.mark_finished(a.id, AttemptState.SUCCEEDED, charged_buzz=8, images=images)
        (pending,) = await store.pending_images(10)
        assert (pending.index, pending.blob_id, pending.workflow_id) == (0, "b0", "wf")
        await store.mark_downloaded(
            a.id, 0, path="images/x_0.jpeg", sha256="ab" * 32, size_bytes=10, width=64, height=64
        )
        with pytest.raises(StoreError, match="not pending"):
            await store.mark_lost(a.id, 0, "gone")
        counts = await store.counts()
        assert (counts["image:downloaded"], counts["image:lost"]) == (1, 1)


async def test_a_submit_answered_with_the_end_is_recorded_running_and_finished_at_once(
    store: Store, store_backend: StoreBackend
) -> None:
    """`mark_finished(..., running=...)` from submitting: the same events and ledger as
    mark_running then mark_finished; refused whole (nothing written) unless submitting."""
    with anyio.fail_after(10):
        await store.plan_rows([cell(1, estimate=10), cell(2, estimate=10)], max_attempts=2)
        a, b = await store.next_planned(10)
        assert await store.reserve(a.id, 10)
        retry_id = await store.mark_finished(
            a.id, AttemptState.FAILED, charged_buzz=0, running=("wf-1", 8)
        )
        assert retry_id is not None  # retried, as a failure after running is
        done = await store.attempt(a.id)
        assert (done.state, done.workflow_id, done.charged_buzz) == ("failed", "wf-1", 0)
        assert (await store.budget()).committed_buzz == 0
        with pytest.raises(StoreError, match="cannot move planned -> running"):
            await store.mark_finished(
                b.id, AttemptState.SUCCEEDED, charged_buzz=8, running=("wf-2", 8)
            )
        assert (await store.attempt(b.id)).state is AttemptState.PLANNED
    events = store_backend.rows(
        "SELECT attempt_id, from_state, to_state, buzz FROM events ORDER BY id"
    )
    assert [e for e in events if e[0] == a.id] == [
        (a.id, None, "planned", None),
        (a.id, "planned", "submitting", 10),
        (a.id, "submitting", "running", 8),
        (a.id, "running", "failed", 0),
    ]
    assert [e for e in events if e[0] == b.id] == [(b.id, None, "planned", None)]


async def test_illegal_transition_names_both_states(store: Store) -> None:
    with anyio.fail_after(10):
        await store.plan_rows([cell(1)], max_attempts=1)
        (a,) = await store.next_planned(1)
        with pytest.raises(StoreError, match="cannot move planned -> running"):
            await store.mark_running(a.id, "wf", charged_buzz=8)


async def test_state_survives_reopen_and_a_second_runner_is_refused(
    store_backend: StoreBackend,
) -> None:
    with anyio.fail_after(10):
        s = await store_backend.open()
        await s.init_batch(name="t", tag="zbatch:t", cap_buzz=50)
        await s.plan_rows([cell(1)], max_attempts=1)
        (a,) = await s.next_planned(1)
        assert await s.reserve(a.id, 8)
        # the folder's lock file names the runner; PostgreSQL's advisory lock, its session
        with pytest.raises(StoreError, match=r"in use by (pid \d+@|another zbatch)"):
            await store_backend.open()
        await s.close()
        reopened = await store_backend.open()
        try:
            (active,) = await reopened.active()
            assert (active.state, active.reserved_buzz) == (AttemptState.SUBMITTING, 8)
            assert (await reopened.budget()).committed_buzz == 8
            with pytest.raises(StoreError, match="holds batch 't', not 'other'"):
                await reopened.init_batch(name="other", tag="x", cap_buzz=1)
        finally:
            await reopened.close()


async def test_plan_fingerprint_holds_only_at_the_generation_it_was_taken(store: Store) -> None:
    """A retry or a cancel moves the batch to a new generation: the next run must plan."""
    with anyio.fail_after(10):
        assert await store.plan_is_current("fp") is None
        await store.plan_rows([cell(i) for i in range(3)], max_attempts=1)
        await store.set_plan_fingerprint("fp")
        known = await store.plan_is_current("fp")
        assert known is not None
        assert (known.added, known.kept, known.removed) == (0, 3, 0)
        assert await store.plan_is_current("other") is None
        await store.plan_rows([cell(0)], max_attempts=1)  # anything that opens a generation
        assert await store.plan_is_current("fp") is None


def test_importing_the_store_loads_neither_yaml_nor_the_manifest_parser() -> None:
    """The store stands below the manifest: opening a batch must not parse YAML."""
    check = (
        "import sys, runner.store._store;"
        " found = [m for m in ('yaml', 'runner.manifest', 'runner.grid', 'runner.dataset')"
        " if m in sys.modules]; print(found)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert done.stdout.strip() == "[]"
