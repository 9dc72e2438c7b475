"""A stateful property of the budget ledger: whatever the order of reservations, answers,
refunds, rejections and crashes, charged + reserved never exceeds the cap and always equals
the ledger's committed total.

The only assumption is the engine's: an attempt is never charged more than it reserved
(it reserves the service's whatif price or the formula's, whichever is higher).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from runner.store import Store, open_store
from runner.store._rows import AttemptState
from tests.cells import planned_cell
from tests.services import PostgresCluster

T = TypeVar("T")
CAP = 100
OUTCOMES = [
    AttemptState.SUCCEEDED,
    AttemptState.FAILED,
    AttemptState.EXPIRED,
    AttemptState.CANCELED,
    AttemptState.BLOCKED,
]


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="zbatch-ledger-"))
        self.location: Path | str = self.folder / "batch.sqlite"
        self.store: Store | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def s(self) -> Store:
        assert self.store is not None
        return self.store

    @initialize(estimates=st.lists(st.integers(1, 40), min_size=1, max_size=12))
    def start(self, estimates: list[int]) -> None:
        self.store = self.run(open_store(self.location))
        self.run(self.s.init_batch(name="prop", tag="zbatch:prop", cap_buzz=CAP))
        cells = [
            planned_cell(f"{i:032x}", {"i": i}, model="turbo", estimate_buzz=estimate)
            for i, estimate in enumerate(estimates)
        ]
        self.run(self.s.plan_rows(cells, max_attempts=3))

    @rule(pick=st.integers(0, 50))
    def reserve(self, pick: int) -> None:
        planned = self.run(self.s.next_planned(100))
        if not planned:
            return
        a = planned[pick % len(planned)]
        before = self.run(self.s.budget()).committed_buzz
        granted = self.run(self.s.reserve(a.id, a.estimate_buzz))
        assert granted == (before + a.estimate_buzz <= CAP)

    @rule(pick=st.integers(0, 50), charge_share=st.floats(0, 1), reject=st.booleans())
    def answer(self, pick: int, charge_share: float, reject: bool) -> None:
        submitting = [a for a in self.run(self.s.active()) if a.state == "submitting"]
        if not submitting:
            return
        a = submitting[pick % len(submitting)]
        if reject:
            self.run(self.s.mark_rejected(a.id, "400"))
        else:
            charged = int(a.reserved_buzz * charge_share)
            self.run(self.s.mark_running(a.id, f"wf-{a.id}", charged))

    @rule(pick=st.integers(0, 50), outcome=st.sampled_from(OUTCOMES), refund=st.booleans())
    def finish(self, pick: int, outcome: AttemptState, refund: bool) -> None:
        running = [a for a in self.run(self.s.active()) if a.state == "running"]
        if not running:
            return
        a = running[pick % len(running)]
        charged = 0 if refund else a.charged_buzz
        self.run(self.s.mark_finished(a.id, outcome, charged_buzz=charged))

    @rule()
    def crash_and_reopen(self) -> None:
        self.run(self.s.close())
        self.store = self.run(open_store(self.location))

    @invariant()
    def cap_holds_and_ledger_adds_up(self) -> None:
        if self.store is None:
            return
        budget = self.run(self.s.budget())
        assert budget.committed_buzz == budget.charged_buzz + budget.reserved_buzz
        assert budget.committed_buzz <= CAP

    def teardown(self) -> None:
        if self.store is not None:
            self.run(self.s.close())
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)


LedgerMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, derandomize=True
)
TestLedger = LedgerMachine.TestCase


@pytest.mark.postgresql
def test_the_ledger_adds_up_on_postgresql(pg_cluster: PostgresCluster) -> None:
    """The same machine, each example on a database of its own in the test cluster."""

    class PostgresLedger(LedgerMachine):
        def __init__(self) -> None:
            self.database = contextlib.ExitStack()
            url = self.database.enter_context(pg_cluster.new_database())
            super().__init__()
            self.location = url

        def teardown(self) -> None:
            try:
                super().teardown()
            finally:
                self.database.close()

    run_state_machine_as_test(
        PostgresLedger,
        settings=settings(max_examples=15, stateful_step_count=25, deadline=None, derandomize=True),
    )
