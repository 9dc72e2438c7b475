"""Human output and logs do not repeat each other (issue 15, item 12).

Every event from info up goes to OUT/log.jsonl; stderr gets only warnings and errors (human
lines on a terminal, one JSON line each otherwise) and, off a terminal, `run`'s plain
progress line every 10 s (none with --quiet). When all is well, nothing else is on stderr.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli._main import main

MANIFEST = """
name: quiet
out: out
budget: 1000
defaults: {model: turbo, size: 512x512}
grid:
  prompt: ["a fox", "an owl"]
  seed: {count: 2}
limits: {in_flight: 4, submit_per_s: 50, downloads: 2}
"""


def zbatch(*args: str) -> subprocess.CompletedProcess[str]:
    """`zbatch ARGS` in a child process whose stdout and stderr are pipes, not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True, timeout=120
    )


def events(out: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """A finished batch of 4 cells, made on the embedded emulator off a terminal."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    run = zbatch("run", str(manifest), "--emulator", "--time-scale", "0")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Done: 4 of 4 cells succeeded.")
    # Off a terminal stderr holds only the plain progress lines: no log line, JSON or other.
    lines = run.stderr.splitlines()
    assert lines, "the plain progress line is printed at the start"
    assert all(line.startswith("[") and " cells " in line for line in lines), run.stderr
    assert not any(line.lstrip().startswith("{") for line in lines)
    return tmp_path / "out"


def test_run_off_a_terminal_keeps_its_events_in_the_log_not_on_stderr(batch: Path) -> None:
    logged = events(batch)
    assert "emulator_started" in logged
    assert logged.count("cell_submitted") == 4


def test_quiet_run_and_verify_of_a_sound_batch_leave_stderr_empty(batch: Path) -> None:
    again = zbatch("run", str(batch.parent / "m.yaml"), "--emulator", "--quiet")
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    verify = zbatch("verify", str(batch))
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == ""
    assert verify.stdout.startswith("Intact")
    assert events(batch)[-1] == "batch_verified"


class Terminal(io.StringIO):
    """A stderr that says it is a terminal (so logs would render as human lines)."""

    def isatty(self) -> bool:
        return True


def test_verify_on_a_terminal_reports_damage_once_without_log_lines(
    batch: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for image in sorted((batch / "images").glob("*/*.jpg"))[:2]:
        image.unlink()
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["verify", str(batch)]) == 5
    report = capsys.readouterr().out
    assert report.startswith("Damaged: 2 of 4 images do not match.")
    assert report.count(": missing (no such file)") == 2
    assert terminal.getvalue() == ""  # no log line per damaged image on top of the report
    assert events(batch).count("image_damaged") == 2  # they are in the log
