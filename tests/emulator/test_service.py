"""The service model without HTTP: clocks, config, ledger, rate limiter, lazy lifecycle."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runner.emulator import Emulator, EmulatorConfig, ManualClock, RateLimit, account_id
from runner.emulator.clock import iso_utc, parse_iso
from runner.emulator.ledger import Ledger
from runner.emulator.problems import Problem
from runner.emulator.ratelimit import RateLimiter
from runner.emulator.workflows import parse_timespan_s
from tests.emulator.conftest import template

BASE = "http://emulator"


async def test_manual_clock_wakes_sleepers_only_when_advanced() -> None:
    """ManualClock.sleep returns once advance() has moved time past its deadline."""
    clock, woke = ManualClock(), []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper, 2.0)
            tg.start_soon(sleeper, 5.0)
            await anyio.wait_all_tasks_blocked()
            clock.advance(3)
            await anyio.wait_all_tasks_blocked()
            assert woke == [2.0]
            clock.advance(2)
    assert woke == [2.0, 5.0]
    with pytest.raises(ValueError, match="negative"):
        clock.advance(-1)


def test_timestamps_are_iso_utc_from_the_epoch() -> None:
    """JSON times are ISO-8601 UTC with milliseconds and round-trip through parse_iso."""
    assert iso_utc(1_767_225_600.25) == "2026-01-01T00:00:00.250Z"
    assert parse_iso("2026-01-01T00:00:00.250Z") == 1_767_225_600.25


@pytest.mark.parametrize(
    ("text", "seconds"), [("00:20:00", 1200), ("1.00:00:01", 86401), ("00:00:01.5", 1.5)]
)
def test_timespans_parse_like_dotnet(text: str, seconds: float) -> None:
    """Step timeouts are .NET TimeSpans."""
    assert parse_timespan_s(text) == seconds


def test_config_defaults_and_per_token_balances() -> None:
    """Defaults are documented; `balances` overrides the opening balance of one token."""
    config = EmulatorConfig(balances={"rich": {"yellow": 5}})
    assert config.balance_for("anyone") == {
        "blue": 100,
        "green": 0,
        "yellow": 1_000_000,
        "fakeRed": 0,
    }
    assert config.balance_for("rich")["yellow"] == 5
    with pytest.raises(ValueError, match="unknown currency 'gold'"):
        EmulatorConfig(initial_balance={"gold": 1})
    with pytest.raises(ValueError, match="negative"):
        EmulatorConfig(time_scale=-1)


def test_from_flags_loads_the_fault_file(tmp_path: Path) -> None:
    """`zbatch emulator --seed --time-scale --faults` maps onto EmulatorConfig.from_flags."""
    path = tmp_path / "f.yaml"
    path.write_text("step_fail: 0.5\n")
    config = EmulatorConfig.from_flags(seed=3, time_scale=0.1, faults_path=path)
    assert (config.seed, config.time_scale, config.faults.step_fail.p) == (3, 0.1, 0.5)
    assert EmulatorConfig.from_flags().faults.step_fail.p == 0


def test_ledger_splits_debits_and_refunds_to_the_same_currency() -> None:
    """Debits take blue, green, yellow in order; a refund credits each one back."""
    ledger = Ledger(EmulatorConfig(initial_balance={"blue": 2, "green": 3, "yellow": 10}))
    acct = ledger.open("t")
    entries, short = ledger.plan(acct, 7, [])
    assert not short
    posted = ledger.debit(acct, entries)
    assert [(e["accountType"], e["amount"]) for e in posted] == [
        ("blue", 2),
        ("green", 3),
        ("yellow", 2),
    ]
    credits = ledger.refund(acct, posted)
    assert [(c["type"], c["amount"]) for c in credits] == [
        ("credit", 2),
        ("credit", 3),
        ("credit", 2),
    ]
    assert ledger.accounts[acct].balance["yellow"] == 10
    assert ledger.totals() == {"charged_buzz": 7, "refunded_buzz": 7, "net_buzz": 0}
    assert ledger.plan(acct, 16, [])[1] is True


def test_account_ids_never_contain_the_token() -> None:
    """Accounts are named by a hash of the token, so state dumps never reveal it."""
    assert "secret" not in account_id("secret")
    assert account_id("secret") == account_id("secret") != account_id("other")


def test_rate_limiter_refills_on_the_clock() -> None:
    """A bucket of burst 1 at 0.25/s asks for 4 s, then allows again after 4 s."""
    clock = ManualClock()
    limiter = RateLimiter(clock, {"submit": RateLimit(per_s=0.25, burst=1), "read": None})
    assert limiter.acquire("a", "submit") is None
    assert limiter.acquire("a", "submit") == 4
    assert limiter.acquire("b", "submit") is None  # per account
    assert limiter.acquire("a", "read") is None  # unlimited kind
    clock.advance(4)
    assert limiter.acquire("a", "submit") is None


async def test_service_methods_work_without_http() -> None:
    """Emulator.submit/get/state are usable in-process; Problems carry HTTP statuses."""
    clock = ManualClock()
    service = Emulator(EmulatorConfig(seed=1), clock)
    acct = service.authenticate("Bearer direct")
    with anyio.fail_after(5):
        reply = await service.submit(acct, template("d1"), base_url=BASE, wait_s=0, whatif=False)
        clock.advance(60)
        done = await service.get(acct, reply.body["id"], base_url=BASE, wait_s=0)
    assert (reply.status, done.status) == (202, 200)
    assert service.workflow_ids("d1") == [reply.body["id"]]
    assert service.state()["accounts"][acct]["workflows"] == 1
    with pytest.raises(Problem) as info:
        service.authenticate(None)
    assert info.value.status == 401


async def test_refunds_settle_lazily_when_the_failure_time_passes() -> None:
    """A blocked workflow is charged at submit and refunded once its failure instant passes."""
    clock = ManualClock()
    service = Emulator(EmulatorConfig(blocked_words=frozenset({"nope"})), clock)
    acct = service.authenticate("Bearer t")
    with anyio.fail_after(5):
        await service.submit(acct, template(prompt="nope"), base_url=BASE, wait_s=0, whatif=False)
    charged = service.state()["buzz"]
    clock.advance(60)
    settled = service.state()["buzz"]
    assert charged["net_buzz"] == charged["charged_buzz"] > 0
    assert settled["net_buzz"] == 0


async def test_schedules_do_not_depend_on_request_order() -> None:
    """Keyed workflows get the same schedule whichever order they were submitted in."""
    first, second = Emulator(clock=ManualClock()), Emulator(clock=ManualClock())
    keys = ["a", "b", "c"]
    with anyio.fail_after(5):
        for service, order in ((first, keys), (second, keys[::-1])):
            acct = service.authenticate("Bearer t")
            for key in order:
                body = template(key, quantity=2)
                await service.submit(acct, body, base_url=BASE, wait_s=0, whatif=False)

    def plan(service: Emulator, key: str) -> list[float]:
        record = next(r for r in service.records.values() if r.external_id == key)
        return [record.proc_s, *(j.end_s for j in record.jobs)]

    assert all(plan(first, k) == plan(second, k) for k in keys)


def test_turbo_runtime_matches_the_seed_page_table() -> None:
    """At 1024² and default steps, a turbo job takes 3–8 s and a base job 8–20 s."""
    from runner.emulator.workflows import plan_jobs

    for n in range(50):
        inp = {"model": "turbo", "width": 1024, "height": 1024, "steps": 9, "quantity": 1}
        (turbo,) = plan_jobs(0, f"k{n}", inp, 0.0, 1.0)
        base_inp = {**inp, "model": "base", "steps": 20}
        (base,) = plan_jobs(0, f"k{n}", base_inp, 0.0, 1.0)
        assert 3 <= turbo.end_s <= 8
        assert 8 <= base.end_s <= 20
    double = {"model": "turbo", "width": 2048, "height": 1024, "steps": 18, "quantity": 1}
    (big,) = plan_jobs(0, "k0", double, 0.0, 0.5)
    (small,) = plan_jobs(0, "k0", {**double, "width": 1024, "steps": 9}, 0.0, 1.0)
    assert big.end_s == pytest.approx(small.end_s * 2)
