"""The fault profiles shipped in jobs/faults/ load, and say what they claim to."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.emulator import load_faults
from runner.emulator.config import FAULT_KINDS, HOSTILE_FAULT_KINDS, SERVICE_FAULT_KINDS

PROFILES = sorted((Path(__file__).resolve().parents[2] / "jobs" / "faults").glob("*.yaml"))


def test_profiles_are_shipped() -> None:
    assert [p.name for p in PROFILES] == ["created-then-502.yaml", "flaky.yaml", "hostile.yaml"]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_profile_loads(path: Path) -> None:
    profile = load_faults(path)
    assert any(profile.rule(kind).p > 0 for kind in FAULT_KINDS)


def test_flaky_profile_turns_on_every_service_fault_kind() -> None:
    profile = load_faults(PROFILES[1])
    assert {kind for kind in FAULT_KINDS if profile.rule(kind).p > 0} == set(SERVICE_FAULT_KINDS)


def test_hostile_profile_turns_on_every_hostile_kind_each_a_bounded_number_of_times() -> None:
    profile = load_faults(PROFILES[2])
    assert {kind for kind in FAULT_KINDS if profile.rule(kind).p > 0} == set(HOSTILE_FAULT_KINDS)
    assert all(profile.rule(kind).times is not None for kind in HOSTILE_FAULT_KINDS)


def test_created_then_502_fires_exactly_once() -> None:
    rule = load_faults(PROFILES[0]).rule("submit_5xx_after")
    assert (rule.p, rule.times) == (1.0, 1)
