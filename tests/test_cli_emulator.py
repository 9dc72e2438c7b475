"""`zbatch emulator`'s flags reach its config; a bad fault profile is a usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli._main import main
from runner.emulator import EmulatorConfig, RateLimit


def test_flags_set_url_ttl_rate_and_blocked_words() -> None:
    config = EmulatorConfig.from_flags(
        seed=3, url_ttl_s=30, submit_per_s=2.5, blocked_words=frozenset({"gore"})
    )
    assert (config.seed, config.url_ttl_s, config.blocked_words) == (3, 30.0, frozenset({"gore"}))
    assert config.submit_limit == RateLimit(per_s=2.5, burst=2)
    assert EmulatorConfig.from_flags().submit_limit == EmulatorConfig().submit_limit


def test_a_missing_fault_profile_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["emulator", "--faults", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert "zbatch: error: --faults:" in err
    assert "Traceback" not in err


def test_a_wrong_fault_profile_names_what_is_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "f.yaml"
    profile.write_text("step_explode: 0.5\n")
    assert main(["emulator", "--faults", str(profile)]) == 2
    assert "unknown fault kind 'step_explode' (allowed: submit_5xx_before" in (
        capsys.readouterr().err
    )


def test_run_quiet_keeps_stderr_to_warnings_and_the_log_file_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--quiet` is quiet: no info event on stderr (a night's run would print one per cell),
    while OUT/log.jsonl still holds every event."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "name: q\nout: out\nbudget: 20\ndefaults: {size: 64x64}\n"
        "grid: {prompt: p, seed: {count: 3}}\n",
        encoding="utf-8",
    )
    code = main(["run", str(manifest), "--emulator", "--time-scale", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0
    assert "cell_submitted" not in err
    assert "cell_finished" not in err
    log = (tmp_path / "out" / "log.jsonl").read_text(encoding="utf-8")
    assert log.count('"event": "cell_submitted"') == 3
    assert log.count('"event": "cell_finished"') == 3
