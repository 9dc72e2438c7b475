"""zbatch run --adopt after batch.sqlite was deleted mid-batch, against the same emulator."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

from runner.emulator import EmulatorConfig, FaultProfile, FaultRule, ManualClock, make_app
from runner.errors import CapReached
from runner.identity import external_id
from runner.ops._run import RunOverrides, run_batch
from tests.e2e.ops_harness import (
    FAST,
    assert_one_workflow_per_external_id,
    cell_states,
    client_for,
    delete_record,
    emulator_of,
    images_on_disk_match,
    manifest,
    rows,
    running,
    tick,
)

QUERY = (
    "SELECT external_id, workflow_id, state FROM attempts WHERE workflow_id IS NOT NULL"
    " ORDER BY external_id"
)


async def test_adopt_after_the_record_is_lost_with_work_in_flight(tmp_path: Path) -> None:
    """Killed with every workflow in flight, record deleted: adoption pays nothing twice."""
    with anyio.fail_after(60):
        m = manifest(tmp_path, seeds=3, attempts=3, size="1024x1024", model="base")  # 9 cells
        clock = ManualClock()
        faults = FaultProfile(step_fail=FaultRule(p=1.0, times=2))
        app = make_app(EmulatorConfig(time_scale=1.0, faults=faults), clock=clock)
        emulator = emulator_of(app)
        async with client_for(app) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_batch, m, client)
                while running(m) < 8:  # the manifest's in_flight
                    await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()  # as a kill would: 8 in flight, 1 cell not sent
            delete_record(m)
            shutil.rmtree(m.out / "images", ignore_errors=True)
            assert emulator.state()["workflow_count"] == 8

            async with anyio.create_task_group() as tg:
                tg.start_soon(tick, clock)
                outcome = await run_batch(
                    m, client, overrides=RunOverrides(adopt=True), runtime_scale=0.001,
                    tuning=FAST,
                )  # fmt: skip
                tg.cancel_scope.cancel()
        assert outcome.adopted is not None
        assert (outcome.adopted.seen, outcome.adopted.adopted) == (8, 8)
        assert outcome.adopted.unmatched == outcome.adopted.conflicts == 0
        state = emulator.state()
        assert_one_workflow_per_external_id(app)
        adopted = [external_id(key, 1) for key in cell_states(m)]
        assert all(state["submit_attempts"][key] == 1 for key in adopted)  # none sent again
        assert set(cell_states(m).values()) == {"succeeded"}
        assert images_on_disk_match(m) == 9 * 2
        assert outcome.budget.charged_buzz == state["buzz"]["net_buzz"]
        assert outcome.budget.reserved_buzz == 0


async def test_adopt_records_failed_attempts_in_order_and_continues_numbering(
    tmp_path: Path,
) -> None:
    """Failed first attempts and their retries are adopted in order; the ledger counts them."""
    with anyio.fail_after(60):
        m = manifest(tmp_path, seeds=4, attempts=3)  # 12 cells at 1 Buzz
        faults = FaultProfile(step_fail=FaultRule(p=1.0, times=3))
        app = make_app(EmulatorConfig(time_scale=0, faults=faults))
        emulator = emulator_of(app)
        async with client_for(app) as client:
            with pytest.raises(CapReached) as capped:
                await run_batch(m, client, overrides=RunOverrides(budget_buzz=5), tuning=FAST)
            assert capped.value.outcome.stats.cap_reached
            before = rows(m, QUERY)
            delete_record(m)
            shutil.rmtree(m.out / "images", ignore_errors=True)
            count = emulator.state()["workflow_count"]

            outcome = await run_batch(
                m, client, overrides=RunOverrides(adopt=True, budget_buzz=1000), tuning=FAST
            )
        assert outcome.adopted is not None
        assert outcome.adopted.adopted == count
        assert outcome.adopted.finished == count  # time_scale 0: all had ended
        known = {r[0] for r in before}
        again = [r for r in rows(m, QUERY) if r[0] in known]
        assert again == before  # the same workflows, the same outcomes
        assert_one_workflow_per_external_id(app)
        state = emulator.state()
        assert all(n == 1 for n in state["submit_attempts"].values())
        assert set(cell_states(m).values()) == {"succeeded"}
        assert images_on_disk_match(m) == 12 * 2
        assert outcome.budget.charged_buzz == state["buzz"]["net_buzz"] == 12
        assert rows(m, "SELECT committed_buzz FROM batch") == [(12,)]


async def test_adopt_reports_workflows_of_cells_not_in_the_manifest(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        m = manifest(tmp_path, seeds=2)
        app = make_app(EmulatorConfig(time_scale=0))
        async with client_for(app) as client:
            await run_batch(m, client, tuning=FAST)
            delete_record(m)
            smaller = manifest(tmp_path, seeds=1)  # same name, half the cells
            outcome = await run_batch(
                smaller, client, overrides=RunOverrides(adopt=True), tuning=FAST
            )
        assert outcome.adopted is not None
        assert (outcome.adopted.adopted, outcome.adopted.unmatched) == (3, 3)
        assert outcome.stats.submitted == 0
        assert emulator_of(app).state()["workflow_count"] == 6
