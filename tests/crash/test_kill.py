"""kill -9 at seeded random moments, then a run to the end: nothing twice, nothing lost, cap held.

The short version of `make torture` (tests/crash/torture.py): `zbatch run` and `zbatch
emulator` as real subprocesses, a fault profile with every kind the runner must survive, a
few SIGKILLs per scenario. `harness.run_scenario` checks after every kill and at the end;
docs/states.md ("The crash test") lists the invariants.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tests.crash.harness import (
    EXIT_CAP,
    EXIT_DONE,
    capped_scenario,
    open_scenario,
    run_scenario,
)


def test_sigkill_loses_no_image_and_submits_no_attempt_twice(tmp_path: Path) -> None:
    """Eight kills under faults, then a run to the end: every cell resolved, images verified."""
    report = run_scenario(open_scenario("open", seed=11, kills=8), tmp_path)
    assert report.violations == []
    assert report.kills >= 6, "most runs should be killed mid-work, not finish first"
    assert report.duplicates == 0
    assert report.final_rc == EXIT_DONE
    assert report.cells == 48
    assert report.succeeded == 48
    assert report.images + report.lost == 72  # 24 cells of one image, 24 of two
    assert report.faults_fired > 0
    assert report.final_net_buzz == 48 <= report.scenario.cap_buzz


def test_sigkill_with_a_binding_cap_never_spends_past_it(tmp_path: Path) -> None:
    """The cap binds mid-batch while kills land: spending stops at the cap, exit 4, resumable."""
    report = run_scenario(capped_scenario("capped", seed=12, kills=8), tmp_path)
    cap = report.scenario.cap_buzz
    assert report.violations == []
    assert report.kills >= 6
    assert report.duplicates == 0
    assert report.final_rc == EXIT_CAP
    assert report.max_net_buzz <= cap
    assert report.max_committed_buzz <= cap
    assert report.final_net_buzz <= cap
    assert report.unsubmitted > 0


def test_token_appears_in_no_file_and_no_output(tmp_path: Path) -> None:
    """A sentinel token reaches the service yet shows up in no file under OUT, log or output."""
    scenario = replace(open_scenario("token", seed=13, kills=2), seeds_per_prompt=1)
    report = run_scenario(scenario, tmp_path)
    assert report.violations == []  # includes "the token reached the service" and the search
    assert report.cells == 12
    assert report.workflows == report.attempts  # one workflow per attempt, every one used
    for path in tmp_path.rglob("*"):  # OUT, the runs' stdout and stderr, the emulator's log
        if path.is_file():
            assert scenario.token.encode() not in path.read_bytes(), f"token found in {path}"
