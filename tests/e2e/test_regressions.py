"""Regressions found by the crash test (tests/crash), kept as fast deterministic tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio import wait_all_tasks_blocked

from runner.api._client import Client
from runner.contract import _zimage as zimage
from runner.disk._out_folder import OutFolder
from runner.emulator import (
    EmulatorConfig,
    EmulatorTransport,
    FaultProfile,
    FaultRule,
    ManualClock,
    make_app,
)
from runner.engine._engine import Engine, EngineConfig
from runner.grid import store_rows
from runner.identity import batch_tag
from runner.ops._run import RunOverrides, run_batch
from runner.store._store import Store
from tests.cells import planned_cell
from tests.e2e.test_run import FAST, manifest
from tests.emulator.conftest import template


async def test_resume_with_fewer_slots_than_running_workflows_finishes(tmp_path: Path) -> None:
    """A run killed with 4 in flight, resumed with --concurrency 2, used to wait forever."""
    m = manifest(tmp_path, seeds=1)  # 6 cells
    app = make_app(EmulatorConfig(time_scale=0))
    async with Client(
        base_url="http://emulator", token="t", transport=EmulatorTransport(app)
    ) as client:
        async with await Store.open(OutFolder(m.out).db) as store:  # what a kill -9 left behind
            await store.init_batch(name=m.name, tag=batch_tag(m.name), cap_buzz=1000)
            await store.plan_rows(store_rows(m), max_attempts=4)
            for a in await store.next_planned(4):
                assert await store.reserve(a.id, a.estimate_buzz)
                steps = [{"$type": "imageGen", "input": zimage.step_input(a.request)}]
                wf = await client.submit(steps, external_id=a.external_id, tags=[m.name])
                assert wf.id is not None
                await store.mark_running(a.id, wf.id, a.estimate_buzz)
        with anyio.fail_after(20):
            outcome = await run_batch(m, client, tuning=FAST, overrides=RunOverrides(in_flight=2))
    assert outcome.counts["succeeded"] == 6


async def test_a_failed_answer_carries_its_refund() -> None:
    """The emulator once posted refunds at one clock reading and rendered at a later one."""
    with anyio.fail_after(10):
        clock = ManualClock()
        faults = FaultProfile(step_fail=FaultRule(p=1.0), slow=FaultRule(p=1.0, delay_s=1000))
        app = make_app(EmulatorConfig(time_scale=1.0, faults=faults), clock=clock)
        answers: list[httpx.Response] = []
        async with httpx.AsyncClient(
            transport=EmulatorTransport(app),
            base_url="http://emulator",
            headers={"Authorization": "Bearer t"},
        ) as client:

            async def submit() -> None:
                answers.append(await client.post("/v2/consumer/workflows", json=template("k1")))

            async with anyio.create_task_group() as tg:  # the answer is held 1000 clock s
                tg.start_soon(submit)
                await wait_all_tasks_blocked()
                clock.advance(1000)  # meanwhile the step fails and is due its refund
        body = answers[0].json()
        assert body["status"] == "failed"
        kinds = [t["type"] for t in body["transactions"]["list"]]
        assert kinds.count("credit") == 1


def failed_workflow(*, refunded: bool) -> dict[str, Any]:
    transactions = [{"type": "debit", "amount": 8, "accountType": "yellow"}]
    if refunded:
        transactions.append({"type": "credit", "amount": 8, "accountType": "yellow"})
    return {
        "id": "w1", "status": "failed", "createdAt": "2026-01-01T00:00:00Z",
        "transactions": {"list": transactions},
        "cost": {"base": 0, "total": 8, "tips": {"civitai": 0, "creators": 0}},
        "steps": [{"$type": "imageGen", "name": "$0", "priority": "normal", "status": "failed",
                   "metadata": {}, "input": {}, "output": {"images": [], "errors": ["x"]}}],
        "tags": [], "metadata": {}, "arguments": {}, "callbacks": [],
        "tips": {"civitai": 0, "creators": 0}, "upgradeMode": "manual", "currencies": [],
        "forceRefunded": False,
    }  # fmt: skip


async def test_a_refund_posted_after_the_failure_is_waited_for(tmp_path: Path) -> None:
    """The real service may post a failed workflow's credit a moment after its status: the
    poller looks again before recording the charge, so the ledger matches the service."""
    gets = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal gets
        gets += 1
        return httpx.Response(200, json=failed_workflow(refunded=gets >= 3))

    with anyio.fail_after(10):
        async with await Store.open(OutFolder(tmp_path).db) as store:
            await store.init_batch(name="r", tag="zbatch:r", cap_buzz=100)
            request = {"model": "turbo", "width": 64, "height": 64, "steps": 9, "quantity": 1}
            await store.plan_rows(
                [planned_cell("ab" * 16, request, estimate_buzz=8)], max_attempts=1
            )
            (a,) = await store.next_planned(1)
            assert await store.reserve(a.id, 8)
            await store.mark_running(a.id, "w1", 8)
            async with Client(
                base_url="http://api", token="t", transport=httpx.MockTransport(handler)
            ) as client:
                config = EngineConfig(tag="zbatch:r", out_dir=tmp_path, poll_min_s=0.001)
                await Engine(store, client, config).run()
            budget = await store.budget()
            assert (await store.counts())["failed"] == 1
    assert gets == 3
    assert budget.charged_buzz == 0
